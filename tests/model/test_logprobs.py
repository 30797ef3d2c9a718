"""Chunked log-probs / entropy / SFT loss (agro_jax/model/logprobs.py) equal the plain full-logits computation, with
gradients; the model's hidden()/logits() split equals its __call__."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from agro_jax.model.logprobs import next_token_stats, token_stats
from agro_jax.model.qwen import Qwen, QwenConfig, make_causal_mask, positions_from_valid
from agro_jax.rl import grpo
from agro_jax.train import sft

B, T, D, V = 4, 13, 8, 50  # T = 13: no chunk size below divides it, so the padded tail is exercised
P = jax.sharding.PartitionSpec


def _plain(hidden_BxTxD, w_DxV, targets_BxT):
    """The reference: float32 logits, log_softmax, entropy -sum p log p (what grpo.sequence_logprobs did)."""
    logp_BxTxV = jax.nn.log_softmax(jnp.einsum("btd,dv->btv", hidden_BxTxD, w_DxV), axis=-1)
    picked = jnp.take_along_axis(logp_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
    return picked, -jnp.sum(jnp.exp(logp_BxTxV) * logp_BxTxV, axis=-1)


def _chunked(chunk):
    return lambda h, w, y: token_stats(h, y, lambda x: jnp.einsum("bcd,dv->bcv", x, w), chunk)


def _data(seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    hidden = jax.random.normal(k1, (B, T, D)) * 2.0  # large logits: a peaked softmax, where chunking errors would show
    w = jax.random.normal(k2, (D, V))
    targets = jax.random.randint(k3, (B, T), 0, V)
    mask = np.ones((B, T), np.float32)
    mask[1, 9:] = 0.0  # a right-padded row
    mask[3] = 0.0  # an all-padding row (e.g. a filtered group)
    return hidden, w, targets, jnp.asarray(mask)


def _loss(fn, hidden, w, targets, mask):
    logp, ent = fn(hidden, w, targets)
    return jnp.sum(logp * mask) + 0.1 * jnp.sum(ent * mask)


@pytest.mark.parametrize("chunk", [1, 4, 13, 32])
def test_chunked_equals_plain_values_and_grads(chunk):
    hidden, w, targets, mask = _data()
    got_logp, got_ent = jax.jit(_chunked(chunk))(hidden, w, targets)
    want_logp, want_ent = _plain(hidden, w, targets)
    np.testing.assert_allclose(got_logp, want_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_ent, want_ent, rtol=1e-5, atol=1e-5)
    g_got = jax.jit(jax.grad(lambda h, w: _loss(_chunked(chunk), h, w, targets, mask), argnums=(0, 1)))(hidden, w)
    g_want = jax.grad(lambda h, w: _loss(_plain, h, w, targets, mask), argnums=(0, 1))(hidden, w)
    for got, want in zip(g_got, g_want):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(g_got[0][3]).max()) == 0.0  # the all-padding row gets no gradient


def test_chunked_on_sharded_mesh():
    """Batch over (data, fsdp), vocab over tensor, explicit axes (the strictest case): same numbers as plain."""
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
    hidden, w, targets, mask = _data(2)
    out = P(("data", "fsdp"), None, "tensor")
    head = lambda w: lambda x: jnp.einsum("bcd,dv->bcv", x, w, out_sharding=out)  # noqa: E731
    fn = lambda h, w, y: token_stats(h, y, head(w), 4)  # noqa: E731
    with jax.set_mesh(mesh):
        h, ws, y = (jax.device_put(x, s) for x, s in ((hidden, P(("data", "fsdp"))), (w, P(None, "tensor")),
                                                       (targets, P(("data", "fsdp")))))  # fmt: skip
        logp, ent = jax.jit(fn)(h, ws, y)
        g = jax.jit(jax.grad(lambda h, w: _loss(fn, h, w, y, mask)))(h, ws)
    want_logp, want_ent = _plain(hidden, w, targets)
    np.testing.assert_allclose(logp, want_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ent, want_ent, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g, jax.grad(lambda h: _loss(_plain, h, w, targets, mask))(hidden), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ the real model


def _tiny(family="qwen2", **kw):
    cfg = dict(family=family, vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
               num_kv_heads=2, head_dim=8, attention_bias=family == "qwen2", qk_norm=family == "qwen3",
               tie_word_embeddings=family == "qwen3")  # fmt: skip
    return Qwen(QwenConfig(**{**cfg, **kw}), rngs=nnx.Rngs(0))


def _tokens():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 96, (4, 24)).astype(np.int32)
    valid = np.ones((4, 24), bool)
    valid[1, :5] = False  # left padding (a prompt shorter than the bucket)
    valid[2, 17:] = False  # right padding (a completion shorter than T)
    tokens[~valid] = 0
    mask = (valid & (np.arange(24) >= 8)).astype(np.float32)
    mask[3] = 0.0  # a row without agent tokens
    return jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(mask)


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_hidden_then_logits_is_call(family):
    model = _tiny(family)
    tokens, valid, _ = _tokens()
    args = (tokens, positions_from_valid(valid), make_causal_mask(valid))
    logits, hidden, last = nnx.jit(lambda m: (m(*args)[0], m.hidden(*args)[0], m.logits(m.hidden(*args)[0][:, -1:])))(
        model
    )
    assert hidden.shape == (4, 24, 32)
    np.testing.assert_array_equal(nnx.jit(lambda m, h: m.logits(h))(model, hidden), logits)
    # e.g. prefill needs only the last position (another matmul shape: equal to rounding, not bitwise)
    np.testing.assert_allclose(last, logits[:, -1:], rtol=1e-6, atol=1e-6)


def _old_sequence_logprobs(model, tokens, valid):
    """grpo.sequence_logprobs before chunking: full logits, log_softmax, entropy."""
    logits, _ = model(tokens, positions_from_valid(valid), make_causal_mask(valid))
    logp_BxTxV = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    picked = jnp.take_along_axis(logp_BxTxV, tokens[:, 1:, None], axis=-1)[..., 0]
    ent = -jnp.sum(jnp.exp(logp_BxTxV) * logp_BxTxV, axis=-1)
    pad = jnp.zeros_like(picked[:, :1])
    return jnp.concatenate([pad, picked], 1), jnp.concatenate([pad, ent], 1)


@pytest.mark.parametrize("chunk", [0, 5])
def test_sequence_logprobs_and_grads_match_plain(chunk):
    model = _tiny("qwen2")
    tokens, valid, mask = _tokens()
    graphdef, params, rest = grpo.split_model(model)

    def loss(params, fn):
        logp, ent = fn(nnx.merge(graphdef, params, rest), tokens, valid)
        return jnp.sum(logp * mask) + 0.1 * jnp.sum(ent * mask), (logp, ent)

    new = lambda m, t, v: grpo.sequence_logprobs(m, t, v, chunk=chunk)  # noqa: E731
    (l_got, (logp, ent)), g_got = jax.jit(jax.value_and_grad(lambda p: loss(p, new), has_aux=True))(params)
    old = jax.jit(jax.value_and_grad(lambda p: loss(p, _old_sequence_logprobs), has_aux=True))
    (l_want, (logp_w, ent_w)), g_want = old(params)
    np.testing.assert_allclose(logp, logp_w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ent, ent_w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(l_got, l_want, rtol=1e-5)
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(g_got), jax.tree.leaves(g_want)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_sft_step_chunked_equals_plain():
    """One SFT step (loss and updated params) with model.logits_chunk=8 equals the unchunked step."""
    tokens, valid, mask = _tokens()
    batch = grpo.to_micro({"tokens_BxT": tokens, "valid_BxT": valid, "loss_mask_BxT": mask}, 2)
    out = []
    for chunk in (0, 8):
        model = _tiny("qwen3", logits_chunk=chunk)
        graphdef, params, rest = grpo.split_model(model)
        opt = optax.adam(1e-2)
        p, _, m = sft.make_sft_step(graphdef, rest, opt)(params, opt.init(params), batch)
        out.append((float(m["loss"]), p))
    assert np.isfinite(out[0][0]) and out[0][0] == pytest.approx(out[1][0], rel=1e-6)
    for a, b in zip(jax.tree.leaves(out[0][1]), jax.tree.leaves(out[1][1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_next_token_shift_without_entropy():
    hidden, w, tokens, _ = _data(1)
    logp, ent = next_token_stats(hidden, tokens, lambda x: jnp.einsum("bcd,dv->bcv", x, w), 4, entropy=False)
    assert ent is None
    np.testing.assert_allclose(logp[:, 1:], _plain(hidden[:, :-1], w, tokens[:, 1:])[0], rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(logp[:, 0]).max()) == 0.0


def test_remat_policy_names():
    cfg = _tiny().cfg
    assert dataclasses.replace(cfg, remat=True).remat == "full"
    assert dataclasses.replace(cfg, remat=False).remat == "none"
    with pytest.raises(ValueError, match="remat"):
        dataclasses.replace(cfg, remat="some")


def test_bf16_compute_keeps_float32_master_params_and_log_softmax():
    """dtype bfloat16 / param_dtype float32 (the accelerator setting): hidden states in bf16, log-probs and grads in
    float32, log-probs within bf16 rounding of the float32 model (measured max |diff| 1.4e-3 nats, this tiny model)."""
    tokens, valid, mask = _tokens()
    out = {}
    for dtype in ("float32", "bfloat16"):
        model = _tiny("qwen3", dtype=dtype, param_dtype="float32", logits_chunk=8)
        graphdef, params, rest = grpo.split_model(model)
        fn = lambda p, g=graphdef, r=rest: grpo.sequence_logprobs(nnx.merge(g, p, r), tokens, valid, entropy=False)[0]  # noqa: E731
        logp, vjp = jax.vjp(jax.jit(fn), params)
        out[dtype] = (logp, vjp(mask)[0])
    logp16, grads16 = out["bfloat16"]
    assert logp16.dtype == jnp.float32 and all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))
    np.testing.assert_allclose(logp16, out["float32"][0], atol=0.02)
    assert float(jnp.abs(logp16 - out["float32"][0]).max()) > 0  # really computed in bf16
