"""LoRA adapters (agro_jax/model/lora.py): a fresh adapter changes nothing, adapters shard like their base weights,
the merged export reloads in transformers with the adapted logits, and the adapters-off reference equals a frozen
copy of the base (same reference log-probs, same KL in the update)."""

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from agro_jax.model import lora
from agro_jax.model.hf_io import load_hf_checkpoint, save_hf_checkpoint
from agro_jax.model.qwen import make_causal_mask, positions_from_valid
from agro_jax.rl import grpo
from agro_jax.scale.sharding import make_mesh
from configs.common import DEFAULT_RULES, lora_config, mesh_config

RANK = 4


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf")
    return d, helpers.make_hf("qwen2", tied=False, out_dir=d)


def _forward(model, tokens, valid):
    return nnx.jit(lambda m: m(tokens, positions_from_valid(valid), make_causal_mask(valid))[0])(model)


def _randomize_b(model, seed=1):
    """Trained-looking adapters: B != 0 (a fresh B is 0 and would test nothing)."""
    rng = np.random.default_rng(seed)
    for ad in lora.deltas(model).values():
        b = ad.b.get_value()
        ad.b.set_value(jax.device_put(jnp.asarray(rng.normal(0, 0.05, b.shape), b.dtype), b.sharding))


def test_config_errors():
    with pytest.raises(ValueError, match="dropout"):
        lora.LoRAConfig.from_config(dict(lora_config(4), dropout=0.1))
    with pytest.raises(ValueError, match="targets"):
        lora.LoRAConfig.from_config(dict(lora_config(4), targets=("q", "lm_head")))


def test_fresh_adapters_change_nothing_and_shard_like_base(hf_dir):
    d, _ = hf_dir
    mesh = make_mesh(mesh_config((2, 2, 2)))
    tokens, valid = helpers.batch(96, b=4)
    with jax.set_mesh(mesh):
        model, _ = load_hf_checkpoint(d, mesh, DEFAULT_RULES)
        before = _forward(model, tokens, valid)
        lora.add_adapters(model, lora.LoRAConfig.from_config(lora_config(RANK)), mesh, DEFAULT_RULES)
        after = _forward(model, tokens, valid)
    np.testing.assert_array_equal(after, before)  # B = 0: x A B = 0 exactly
    adapted = lora.deltas(model)
    assert len(adapted) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    spec = lambda x: tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))  # noqa: E731
    for (_, i, part, name), ad in adapted.items():
        base = spec(getattr(getattr(model.layers[i], part), name).get_value())
        n_in = lora.IN_DIMS.get(name, 1)
        # A: the base weight's input dims, then the (replicated) rank; B: the rank, then the base's output dims.
        assert spec(ad.a.get_value()) == (*base[:n_in], None), (name, spec(ad.a.get_value()), base)
        assert spec(ad.b.get_value()) == (None, *base[n_in:]), (name, spec(ad.b.get_value()), base)
    assert any(x is not None for x in spec(model.layers[0].attn.q_lora.b.get_value()))  # really sharded on this mesh


def test_merged_export_reloads_in_transformers(hf_dir, tmp_path):
    import torch
    from transformers import Qwen2ForCausalLM

    d, _ = hf_dir
    model, cfg = load_hf_checkpoint(d)
    lora.add_adapters(model, lora.LoRAConfig.from_config(lora_config(RANK)))
    _randomize_b(model)
    tokens, valid = helpers.batch(96, b=3)
    want = np.asarray(_forward(model, tokens, valid))
    save_hf_checkpoint(model, cfg, tmp_path / "merged")
    hf = Qwen2ForCausalLM.from_pretrained(tmp_path / "merged", torch_dtype=torch.float32, attn_implementation="eager")
    got = helpers.hf_logits(hf.eval(), tokens, valid)
    base = helpers.hf_logits(hf_dir[1], tokens, valid)
    assert np.abs(want - base)[valid].max() > 1e-2  # the adapters really changed the model
    # Measured: max |diff| 4.0e-6 on valid positions (float32, HF eager attention vs ours)
    np.testing.assert_allclose(got[valid], want[valid], atol=5e-5, rtol=1e-4)
    again, _ = load_hf_checkpoint(tmp_path / "merged")
    assert not lora.has_adapters(again)
    np.testing.assert_allclose(np.asarray(_forward(again, tokens, valid))[valid], want[valid], atol=1e-5)


def test_adapters_off_reference_equals_frozen_copy(hf_dir):
    """beta > 0 with LoRA: reference log-probs from the adapters zeroed (no second weight copy) equal those of an
    explicit frozen copy of the base model, and so do the update's KL and loss."""
    d, _ = hf_dir
    model, _ = load_hf_checkpoint(d)
    frozen_copy, _ = load_hf_checkpoint(d)  # the explicit reference: a second model, no adapters
    lora.add_adapters(model, lora.LoRAConfig.from_config(lora_config(RANK)))
    _randomize_b(model)  # as after some training: policy != reference
    graphdef, params, frozen, rest = lora.split(model)
    assert jax.tree.leaves(frozen) and not any(x.shape == (96, 32) for x in jax.tree.leaves(params))
    tokens, valid = helpers.batch(96, b=4, t=12)
    tree = {"tokens_BxT": tokens[:, None], "valid_BxT": valid[:, None]}
    logp_fn = grpo.make_logp_fn(graphdef, rest)
    ref_off = logp_fn(lora.adapters_off(params), tree["tokens_BxT"], tree["valid_BxT"], frozen)
    cg, cparams, crest = grpo.split_model(frozen_copy)
    ref_copy = grpo.make_logp_fn(cg, crest)(cparams, tree["tokens_BxT"], tree["valid_BxT"])
    np.testing.assert_array_equal(ref_off, ref_copy)
    policy = logp_fn(params, tree["tokens_BxT"], tree["valid_BxT"], frozen)
    assert float(jnp.abs(policy - ref_copy).max()) > 1e-3

    from agro_jax.config import load_config

    cfg = load_config("configs/tiny_cpu.py", ["--config.grpo.beta=0.1"]).grpo
    mask = np.asarray(valid, np.float32)
    mask[:, :4] = 0.0
    batch = {**tree, "loss_mask_BxT": mask[:, None], "old_logp_BxT": np.asarray(policy),
             "adv_B": np.array([[1.0], [-1.0], [0.5], [-0.5]], np.float32)}  # fmt: skip
    opt = optax.sgd(0.0)
    metrics, step = [], grpo.make_update_step(graphdef, rest, opt, cfg)
    for ref in (ref_off, ref_copy):
        p = jax.tree.map(jnp.copy, params)  # the step donates its params
        _, _, m = step(p, opt.init(p), dict(batch, ref_logp_BxT=np.asarray(ref)), frozen)
        metrics.append(jax.device_get(m))
    assert metrics[0]["kl"] > 0 and metrics[0]["kl"] == metrics[1]["kl"] and metrics[0]["loss"] == metrics[1]["loss"]


def test_lora_sft_step_under_every_remat_policy():
    """Adapters (differentiated) and base weights (a frozen input) under rematerialized blocks: same loss and update
    as without remat (nnx.remat refused this: it mutates block state across trace levels)."""
    from agro_jax.model.qwen import Qwen, QwenConfig
    from agro_jax.train import sft

    tokens, valid = helpers.batch(64, b=4, t=10)
    batch = grpo.to_micro({"tokens_BxT": tokens, "valid_BxT": valid, "loss_mask_BxT": valid.astype(np.float32)}, 1)
    out = []
    for remat in ("none", "full", "save_dots"):
        cfg = QwenConfig(family="qwen3", vocab_size=64, hidden_size=32, intermediate_size=48, head_dim=8, remat=remat)
        model = lora.add_adapters(Qwen(cfg, rngs=nnx.Rngs(0)), lora.LoRAConfig(rank=2))
        graphdef, params, frozen, rest = lora.split(model)
        opt = optax.adam(1e-2)
        p, _, m = sft.make_sft_step(graphdef, rest, opt)(params, opt.init(params), batch, frozen)
        out.append((float(m["loss"]), jax.tree.leaves(p)))
    for loss, leaves in out[1:]:
        assert loss == pytest.approx(out[0][0], rel=1e-6)
        for a, b in zip(leaves, out[0][1]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
