"""Mesh construction, logical->mesh rules, and sharded forward+backward == unsharded on the 8-device CPU mesh."""

import jax
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from agro_jax.model.builder import build_model, init_sharded
from agro_jax.model.qwen import Qwen, QwenConfig, make_causal_mask, positions_from_valid, token_logprobs
from agro_jax.scale.sharding import logical_to_spec, make_mesh, shard_batch, shard_model, state_shardings
from configs.common import DEFAULT_RULES, mesh_config

CFG = QwenConfig(
    family="qwen3",
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    tie_word_embeddings=False,
)


def test_make_mesh_and_rules():
    mesh = make_mesh(mesh_config((2, -1, 2)))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ValueError, match="needs 16 devices"):
        make_mesh(mesh_config((4, 4, 1)))
    assert logical_to_spec(("vocab", "embed"), mesh, DEFAULT_RULES) == jax.P("tensor", "fsdp")
    # a dim the mesh axis does not divide is replicated rather than failing at device_put
    assert logical_to_spec(("vocab", "embed"), mesh, DEFAULT_RULES, shape=(63, 32)) == jax.P(None, "fsdp")
    with pytest.raises(ValueError, match="'nope'"):
        logical_to_spec(("nope",), mesh, DEFAULT_RULES)
    x = shard_batch({"a": np.zeros((8, 3), np.int32)}, mesh)["a"]
    assert x.sharding.spec == jax.P(("data", "fsdp"))
    with pytest.raises(ValueError, match=r"\['b'\].*not divisible"):
        shard_batch({"b": np.zeros((6, 3))}, mesh)


def loss_fn(model, tokens, valid):
    logits, _ = model(tokens, positions_from_valid(valid), make_causal_mask(valid))
    logp = token_logprobs(logits[:, :-1], tokens[:, 1:])
    return -(logp * valid[:, 1:]).sum() / valid[:, 1:].sum()


@pytest.fixture(scope="module")
def reference():
    model = Qwen(CFG, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (8, 12), 0, CFG.vocab_size)
    valid = np.ones((8, 12), bool)
    valid[::3, :4] = False  # some left padding
    (loss, grads) = nnx.value_and_grad(loss_fn)(model, tokens, valid)
    logits, _ = model(tokens, positions_from_valid(valid), make_causal_mask(valid))
    return model, np.asarray(tokens), valid, float(loss), nnx.to_pure_dict(grads), np.asarray(logits)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_sharded_forward_backward_matches(reference, shape):
    ref_model, tokens, valid, ref_loss, ref_grads, ref_logits = reference
    mesh = make_mesh(mesh_config(shape))
    model = shard_model(nnx.clone(ref_model), mesh, DEFAULT_RULES)
    q = model.layers[0].attn.q[...]
    assert q.sharding.spec == logical_to_spec(("embed", "heads", "head_dim"), mesh, DEFAULT_RULES)
    batch = shard_batch({"tokens": tokens, "valid": valid}, mesh)

    @nnx.jit
    def step(model, tokens, valid):
        logits, _ = model(tokens, positions_from_valid(valid), make_causal_mask(valid))
        loss, grads = nnx.value_and_grad(loss_fn)(model, tokens, valid)
        return logits, loss, grads

    with jax.set_mesh(mesh):  # activations get the batch constraint (qwen.shard_activation)
        logits, loss, grads = step(model, batch["tokens"], batch["valid"])
    assert logits.sharding.shard_shape(logits.shape)[0] == 8 // (shape[0] * shape[1])
    np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=1e-5)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-6)
    flat_ref = dict(nnx.traversals.flatten_mapping(ref_grads))
    flat = dict(nnx.traversals.flatten_mapping(nnx.to_pure_dict(grads)))
    assert flat.keys() == flat_ref.keys()
    for k in flat_ref:
        np.testing.assert_allclose(np.asarray(flat[k]), np.asarray(flat_ref[k]), atol=1e-6, err_msg=str(k))


def test_build_model_random_init_is_sharded_and_seeded():
    mesh = make_mesh(mesh_config((2, 2, 2)))
    mc = ConfigDict(
        {
            "hf_path": "",
            "family": "qwen3",
            "vocab_size": 0,
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_layers": 2,
            "num_heads": 4,
            "num_kv_heads": 2,
            "head_dim": 8,
            "rope_theta": 1e4,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
            "max_position_embeddings": 128,
            "dtype": "float32",
            "param_dtype": "float32",
        }
    )
    model, cfg = build_model(mc, mesh, DEFAULT_RULES, vocab_size=72, seed=3)
    assert cfg.vocab_size == 72 and cfg.qk_norm and not cfg.attention_bias
    state = nnx.state(model)
    want = state_shardings(state, mesh, DEFAULT_RULES)
    for (path, v), (_, s) in zip(nnx.to_flat_state(state), nnx.to_flat_state(want), strict=True):
        assert v[...].sharding == s.get_value(), path
    eager = nnx.to_pure_dict(nnx.state(Qwen(cfg, rngs=nnx.Rngs(3))))
    # same values as eager init with the same seed (up to jit-vs-eager float rounding)
    same = jax.tree.map(lambda a, b: bool(np.allclose(a, b, rtol=0, atol=1e-7)), nnx.to_pure_dict(state), eager)
    assert all(jax.tree.leaves(same))
    with pytest.raises(ValueError, match="vocab_size"):
        build_model(mc, mesh, DEFAULT_RULES, vocab_size=None)
    assert init_sharded(cfg, mesh, DEFAULT_RULES, 3).embed[...].sharding.spec == jax.P("tensor", "fsdp")
