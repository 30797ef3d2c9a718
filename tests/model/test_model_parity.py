"""Logits parity with transformers' PyTorch Qwen2/Qwen3ForCausalLM (float32): prefill and KV-cached decoding on a
left-padded batch, weights imported through hf_io from save_pretrained dirs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import batch, hf_logits, make_hf

from agro_jax.model.hf_io import load_hf_checkpoint
from agro_jax.model.kv_cache import KVCache
from agro_jax.model.qwen import make_causal_mask, positions_from_valid

VARIANTS = [("qwen2", False), ("qwen2", True), ("qwen3", True), ("qwen3", False)]


@jax.jit
def _prefill(graphdef, state, tokens, valid, cache):
    model = nnx.merge(graphdef, state)
    p = tokens.shape[1]
    mask = jnp.concatenate([make_causal_mask(valid), jnp.zeros((*valid.shape, cache.max_len - p), bool)], -1)
    return model(tokens, positions_from_valid(valid), mask, cache, 0)


@jax.jit
def _step(graphdef, state, tok_Bx1, pos_Bx1, kv_valid_BxS, cache, index):
    return nnx.merge(graphdef, state)(tok_Bx1, pos_Bx1, kv_valid_BxS[:, None, :], cache, index)


@pytest.mark.parametrize("family,tied", VARIANTS)
def test_logits_parity_prefill_and_cached_decode(family, tied, tmp_path):
    hf = make_hf(family, tied, tmp_path)
    model, cfg = load_hf_checkpoint(tmp_path)
    assert (cfg.family, cfg.tie_word_embeddings, cfg.num_kv_heads) == (family, tied, 2)
    assert cfg.attention_bias == (family == "qwen2") and cfg.qk_norm == (family == "qwen3")
    tokens, valid = batch(cfg.vocab_size)
    want = hf_logits(hf, tokens, valid)

    got, _ = model(tokens, positions_from_valid(valid), make_causal_mask(valid))
    assert np.abs(np.asarray(got)[valid] - want[valid]).max() <= 1e-4

    # prefill the first p columns into the cache, then feed one column at a time
    graphdef, state = nnx.split(model)
    b, t = tokens.shape
    p = 4
    pos = np.asarray(positions_from_valid(valid))
    cache = KVCache.init(cfg, b, t, jnp.float32)
    logits, cache = _prefill(graphdef, state, tokens[:, :p], valid[:, :p], cache)
    steps = [np.asarray(logits)]
    for i in range(p, t):
        kv_valid = valid & (np.arange(t) <= i)[None]
        logits, cache = _step(graphdef, state, tokens[:, i : i + 1], pos[:, i : i + 1], kv_valid, cache, i)
        steps.append(np.asarray(logits))
    got_cached = np.concatenate(steps, 1)
    assert np.abs(got_cached[valid] - want[valid]).max() <= 1e-4
