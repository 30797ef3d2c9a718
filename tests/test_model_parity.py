"""Logits parity with transformers' PyTorch Qwen2/Qwen3ForCausalLM (float32): prefill and KV-cached decoding on a
left-padded batch, weights imported through hf_io from save_pretrained dirs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from agro_jax.model.hf_io import load_hf_checkpoint
from agro_jax.model.kv_cache import KVCache
from agro_jax.model.qwen import make_causal_mask, positions_from_valid

VARIANTS = [("qwen2", False), ("qwen2", True), ("qwen3", True), ("qwen3", False)]


def make_hf(family: str, tied: bool, out_dir, seed: int = 0):
    """A random tiny HF model (GQA 4/2 heads, head_dim != hidden/heads for qwen3), all weights randomized."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    kw = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, rope_theta=1000.0, rms_norm_eps=1e-5, tie_word_embeddings=tied,
              max_position_embeddings=128, attn_implementation="eager")  # fmt: skip
    torch.manual_seed(seed)
    if family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**kw))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=16, **kw))
    with torch.no_grad():  # biases/norms are 0/1 at init: randomize everything so the mapping is really tested
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.2 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    model.eval().save_pretrained(out_dir)
    return model


def batch(vocab, b=3, t=10, seed=1):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (b, t)).astype(np.int32)
    valid = np.ones((b, t), bool)
    valid[1, :3] = False
    valid[2, :6] = False
    return tokens, valid


def hf_logits(model, tokens, valid):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(valid, dtype=torch.long),
            position_ids=torch.tensor(np.asarray(positions_from_valid(valid)), dtype=torch.long),
        )
    return out.logits.float().numpy()


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
