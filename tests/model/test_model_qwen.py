"""Qwen NNX decoder: helpers, and KV-cached step-by-step decoding == one full forward (left-padded batch)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from agro_jax.model.kv_cache import KVCache
from agro_jax.model.qwen import Qwen, QwenConfig, make_causal_mask, positions_from_valid, token_logprobs


def tiny(family, **kw):
    base = dict(
        family=family,
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        attention_bias=family == "qwen2",
        qk_norm=family == "qwen3",
    )
    return QwenConfig(**{**base, **kw})


def test_helpers():
    valid = np.array([[0, 0, 1, 1], [1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(positions_from_valid(valid), [[0, 0, 0, 1], [0, 1, 2, 3]])
    m = np.asarray(make_causal_mask(valid))
    assert m.shape == (2, 4, 4)
    assert m[0, 3].tolist() == [False, False, True, True] and m[1, 1].tolist() == [True, True, False, False]
    logits = jax.random.normal(jax.random.key(0), (2, 3, 5))
    tgt = jnp.array([[0, 1, 4], [2, 3, 0]])
    want = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), np.asarray(tgt)[..., None], -1)[..., 0]
    np.testing.assert_allclose(token_logprobs(logits, tgt), want, atol=1e-6)


@pytest.mark.parametrize("family,tied", [("qwen3", True), ("qwen2", False)])
def test_cached_decode_matches_full_forward(family, tied):
    cfg = tiny(family, tie_word_embeddings=tied)
    model = Qwen(cfg, rngs=nnx.Rngs(0))
    b, t = 3, 7
    tokens = jax.random.randint(jax.random.key(1), (b, t), 0, cfg.vocab_size)
    valid = np.ones((b, t), bool)
    valid[1, :2] = False  # left padding
    valid[2, :4] = False
    pos = positions_from_valid(valid)
    full, none = model(tokens, pos, make_causal_mask(valid))
    assert none is None and full.dtype == jnp.float32 and full.shape == (b, t, cfg.vocab_size)

    # prefill 3 tokens, then one token at a time; slots past the current step are masked.
    p = 3
    cache = KVCache.init(cfg, b, t, cfg.dtype)
    step = nnx.jit(lambda m, tok, pos, mask, c, i: m(tok, pos, mask, c, i))
    mask0 = jnp.concatenate([make_causal_mask(valid[:, :p]), jnp.zeros((b, p, t - p), bool)], -1)
    out, cache = step(model, tokens[:, :p], pos[:, :p], mask0, cache, 0)
    outs = [out]
    for i in range(p, t):
        kv_valid = valid & (np.arange(t) <= i)[None]
        out, cache = step(model, tokens[:, i : i + 1], pos[:, i : i + 1], kv_valid[:, None, :], cache, jnp.int32(i))
        outs.append(out)
    got = jnp.concatenate(outs, 1)
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(full)[valid], atol=1e-5)


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_config_from_hf_matches_transformers_defaults(family):
    """Fields missing from config.json default exactly as in transformers; to_hf() round-trips through it."""
    from transformers import AutoConfig

    minimal = {"model_type": family, "vocab_size": 100, "hidden_size": 256, "intermediate_size": 96,
               "num_hidden_layers": 2, "num_attention_heads": 32}  # fmt: skip
    for extra in ({}, {"num_key_value_heads": None}, {"num_key_value_heads": 2, "head_dim": 8}):
        d = {**minimal, **extra}
        ours, hf = QwenConfig.from_hf(d), AutoConfig.for_model(**d)
        assert ours.num_kv_heads == hf.num_key_value_heads, extra
        assert ours.head_dim == getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        assert ours.tie_word_embeddings == hf.tie_word_embeddings and ours.rms_norm_eps == hf.rms_norm_eps
        assert ours.rope_theta == hf.rope_parameters["rope_theta"]
    cfg = tiny(family, tie_word_embeddings=family == "qwen3")
    back = AutoConfig.for_model(**cfg.to_hf())
    assert QwenConfig.from_hf(back.to_dict()) == cfg
    with pytest.raises(ValueError, match="rope_type='yarn'"):
        QwenConfig.from_hf({**minimal, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})


def test_remat_gives_identical_loss_and_grads():
    cfg = tiny("qwen2")
    tokens = jax.random.randint(jax.random.key(2), (2, 6), 0, cfg.vocab_size)
    valid = np.ones((2, 6), bool)

    def loss(m):
        logits, _ = m(tokens, positions_from_valid(valid), make_causal_mask(valid))
        return token_logprobs(logits[:, :-1], tokens[:, 1:]).mean()

    out = [nnx.jit(nnx.value_and_grad(loss))(Qwen(QwenConfig(**{**cfg.__dict__, "remat": r}), rngs=nnx.Rngs(0)))
           for r in (False, True)]  # fmt: skip
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-6)
    g0, g1 = nnx.to_pure_dict(out[0][1]), nnx.to_pure_dict(out[1][1])
    graphdef, state = nnx.split(Qwen(QwenConfig(**{**cfg.__dict__, "remat": True}), rngs=nnx.Rngs(0)))
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda s: loss(nnx.merge(graphdef, s))))(state))
    assert jaxpr.count("remat") == cfg.num_layers  # one rematerialized region per block
    same = jax.tree.map(lambda a, b: np.allclose(a, b, atol=1e-6), g0, g1)
    assert all(jax.tree.leaves(same))
