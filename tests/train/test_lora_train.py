"""LoRA through the stages (config.model.lora): only adapters are trained, optimized and checkpointed; a stopped run
resumes bit-exactly; a LoRA GRPO run with beta > 0 uses the adapters-off reference and exports a merged policy."""

import json

import jax
import numpy as np
from flax import nnx
from helpers import toy_config

from agro_jax.model import lora
from agro_jax.model.hf_io import load_hf_checkpoint
from agro_jax.model.qwen import make_causal_mask, positions_from_valid
from agro_jax.train import checkpoint, stages

LORA = ["--config.model.lora.rank=4", "--config.model.lora.alpha=8.0"]


def _sequences(n=32, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt = rng.integers(10, 64, int(rng.integers(3, 8)))
        tokens = np.concatenate([prompt, [5, 6, 7, 8, 9, 3]]).astype(np.int32)
        out.append((tokens, np.concatenate([np.zeros(len(prompt)), np.ones(6)]).astype(np.float32)))
    return out


def _config():
    return toy_config(*LORA, "--config.sft.batch_size=8", "--config.sft.epochs=1", "--config.sft.optim.total_steps=4",
                      "--config.sft.optim.learning_rate=0.01", "--config.checkpoint.every_steps=2")  # fmt: skip


def _saved(workdir, step):
    return checkpoint._restore_numpy(workdir / "sft/checkpoints" / str(step) / "state")


def test_lora_sft_checkpoints_only_adapters_and_resumes_exactly(tmp_path):
    seqs = _sequences()
    stages.run_sft(_config(), str(tmp_path / "a"), sequences=seqs, max_steps=4)
    stages.run_sft(_config(), str(tmp_path / "b"), sequences=seqs, max_steps=2)
    stages.run_sft(_config(), str(tmp_path / "b"), sequences=seqs, max_steps=4)  # resumes at step 2
    a, b = _saved(tmp_path / "a", 4), _saved(tmp_path / "b", 4)
    flat = lambda t: {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(t)}  # noqa: E731
    pa, pb = flat(a["params"]), flat(b["params"])
    assert pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)
    oa, ob = flat(a["opt_state"]), flat(b["opt_state"])
    assert oa.keys() == ob.keys() and all(np.array_equal(oa[k], ob[k]) for k in oa)
    # Only adapters: 2 layers x 7 targets x (A, B) in the params, nothing of the base (embedding 64 x 32 etc.).
    assert checkpoint.holds_adapters(tmp_path / "a/sft/checkpoints") and len(pa) == 2 * 7 * 2
    assert all("_lora" in k for k in pa), [k for k in pa if "_lora" not in k]
    n_adapter = sum(x.size for x in pa.values())
    assert sum(x.size for x in oa.values()) <= 2 * n_adapter + 16  # Adam mu + nu (+ counts) of the adapters only
    assert any(np.abs(v).max() > 0 for k, v in pa.items() if k.endswith("['b']['value']"))  # B moved: it trained


def test_lora_grpo_uses_adapters_off_reference_and_exports_merged(tmp_path):
    config = toy_config(*LORA, "--config.grpo.steps=2", "--config.grpo.beta=0.1", "--config.checkpoint.export_hf=true")
    final = stages.run_grpo(config, str(tmp_path))
    assert stages.run_grpo.last_counters == {"ref_forwards": 2, "ref_params_held": True}
    assert checkpoint.holds_adapters(final.parent)
    rows = [json.loads(line) for line in open(tmp_path / "grpo/metrics.jsonl")]
    assert all(np.isfinite(r["kl"]) and r["kl"] >= 0 for r in rows)
    # The export is a plain HF checkpoint with the adapters merged: it equals the LoRA policy of the final step.
    exported, _ = load_hf_checkpoint(tmp_path / "grpo/hf")
    assert not lora.has_adapters(exported)
    _, model, _ = stages.build_policy(config, 64)
    nnx.update(model, checkpoint.load_params(final.parent, nnx.state(model, lora.LoRAParam)))
    tokens = np.arange(1, 17, dtype=np.int32)[None] % 64
    valid = np.ones_like(tokens, bool)
    args = (tokens, positions_from_valid(valid), make_causal_mask(valid))
    np.testing.assert_allclose(exported(*args)[0], model(*args)[0], atol=1e-5, rtol=1e-5)


def test_lora_grpo_on_a_lora_sft_is_evaluated_as_the_chain(tmp_path):
    """GRPO's adapters are trained on the SFT-merged base: build_policy([sft, grpo]) is the exported GRPO policy, and
    so is grpo's checkpoints dir alone (agro-sql eval --policy), through the base chain the stage recorded; without
    that record its adapters land on the plain base (what eval_grpo and eval --policy scored before)."""
    config = toy_config(*LORA, "--config.sft.batch_size=8", "--config.sft.epochs=1", "--config.sft.optim.total_steps=4",
                        "--config.sft.optim.learning_rate=0.01", "--config.grpo.steps=1",
                        "--config.checkpoint.export_hf=true")  # fmt: skip
    sft = stages.run_sft(config, str(tmp_path), sequences=_sequences(), max_steps=4).parent
    grpo = stages.run_grpo(config, str(tmp_path), init_from=sft).parent
    exported, _ = load_hf_checkpoint(tmp_path / "grpo/hf")
    tokens = np.arange(1, 17, dtype=np.int32)[None] % 64
    valid = np.ones_like(tokens, bool)
    args = (tokens, positions_from_valid(valid), make_causal_mask(valid))
    assert stages.recorded_base(grpo) == [sft.absolute()] and stages.recorded_base(sft) == []
    _, chain, _ = stages.build_policy(config, 64, [sft, grpo])
    _, recorded, _ = stages.build_policy(config, 64, grpo)
    np.testing.assert_allclose(exported(*args)[0], chain(*args)[0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(exported(*args)[0], recorded(*args)[0], atol=1e-5, rtol=1e-5)
    (tmp_path / "grpo/base_chain.json").unlink()
    _, alone, _ = stages.build_policy(config, 64, grpo)
    assert np.abs(np.asarray(exported(*args)[0]) - np.asarray(alone(*args)[0])).max() > 1e-3
