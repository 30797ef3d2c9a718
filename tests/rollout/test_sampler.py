"""KV-cache sampler vs full-forward recomputation (tiny random Qwen, CPU), left-padded batches, bounded compiles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from agro_jax.model.qwen import Qwen, QwenConfig, make_causal_mask, positions_from_valid
from agro_jax.model.tokenizer import train_tokenizer
from agro_jax.rollout import agent
from agro_jax.rollout.sampler import Sampler, next_pow2

CFG = ConfigDict({"max_new_tokens_per_turn": 10, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_prompt_bucket": 16})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from configs.tiny_cpu import get_config

    texts = [agent.SYSTEM_PROMPT, "SELECT name FROM singer WHERE age > 30 ORDER BY name"] * 10
    tok = train_tokenizer(texts, 300, str(tmp_path_factory.mktemp("tok")), added_tokens=agent.AGENT_TAGS)
    mcfg = get_config().model
    mcfg.hidden_size, mcfg.intermediate_size = 32, 64
    cfg = QwenConfig.from_config(mcfg, len(tok))
    graphdef, params, rest = nnx.split(Qwen(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    return tok, cfg, graphdef, params, rest


def full_forward_logits(graphdef, params, rest, ids):
    tokens = jnp.asarray([ids], jnp.int32)
    valid = jnp.ones_like(tokens, bool)
    logits, _ = nnx.merge(graphdef, params, rest)(tokens, positions_from_valid(valid), make_causal_mask(valid))
    return np.asarray(logits[0], np.float32)


def test_greedy_with_cache_matches_full_forward_argmax(setup):
    tok, cfg, graphdef, params, rest = setup
    sampler = Sampler(graphdef, rest, cfg, tok, CFG)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(10, len(tok) - 20, n).tolist() for n in (5, 11, 23)]  # one batch, left-padded to 32
    out = sampler.generate(params, prompts, jax.random.key(0), temperature=0.0)
    checked = 0
    for ids, gen, lps, stopped in zip(prompts, out.tokens, out.logps, out.stopped):
        assert len(gen) == len(lps) and (stopped or len(gen) == CFG.max_new_tokens_per_turn)
        logits = full_forward_logits(graphdef, params, rest, ids + gen)
        logz = jax.nn.log_softmax(logits, -1)
        for j, t in enumerate(gen):  # token j is predicted from position len(ids) + j - 1
            assert int(np.argmax(logits[len(ids) + j - 1])) == t, f"prompt len {len(ids)}, step {j}"
            np.testing.assert_allclose(lps[j], logz[len(ids) + j - 1, t], atol=2e-4)
            checked += 1
    assert checked >= 15
    # top_k=1 and a tiny top_p are greedy too, at any temperature (same bucket: no recompile)
    for kw in ({"top_k": 1, "temperature": 1.5}, {"top_p": 1e-6, "temperature": 1.0}):
        assert sampler.generate(params, prompts, jax.random.key(3), **kw).tokens == out.tokens
    assert sampler.traces == {"prefill": 1, "decode": 1}


def test_sampling_is_seeded_and_stops_per_row(setup):
    tok, cfg, graphdef, params, rest = setup
    sampler = Sampler(graphdef, rest, cfg, tok, CFG)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    a = sampler.generate(params, prompts, jax.random.key(1), temperature=1.0)
    b = sampler.generate(params, prompts, jax.random.key(1), temperature=1.0)
    c = sampler.generate(params, prompts, jax.random.key(2), temperature=1.0)
    assert a.tokens == b.tokens and a.tokens != c.tokens
    stop = set(sampler.stop_ids)
    assert set(sampler.end_ids) == {tok.eos_token_id, tok.pad_token_id}
    assert {tok.convert_tokens_to_ids(t) for t in ("</sql>", "</answer>")} | set(sampler.end_ids) == stop
    for gen, stopped in zip(a.tokens + c.tokens, a.stopped + c.stopped):  # a row ends exactly at its first stop id
        assert all(t not in stop for t in gen[:-1]) and (gen[-1] in stop) == stopped


def test_compiles_bounded_across_varying_prompts_and_new_params(setup):
    tok, cfg, graphdef, params, rest = setup
    sampler = Sampler(graphdef, rest, cfg, tok, CFG)
    rng = np.random.default_rng(1)
    buckets = set()
    for step in range(16):  # 16 calls with 3 batch sizes, ~30 prompt lengths, new params and knobs every time
        n = int(rng.integers(1, 4))
        prompts = [rng.integers(10, len(tok) - 20, int(rng.integers(3, 32))).tolist() for _ in range(n)]
        params = jax.tree.map(lambda x: x * 1.0001, params)  # fresh params every step, like training
        temp, top_p = (0.7, 0.9) if step % 2 else (1.0 + step / 10, 1.0)  # filtered and unfiltered branches
        out = sampler.generate(params, prompts, jax.random.key(step), temperature=temp, top_p=top_p, top_k=step % 5)
        assert len(out.tokens) == n
        buckets.add((next_pow2(n), next_pow2(max(map(len, prompts)), 16)))
    assert len(buckets) >= 3  # the calls did span several buckets
    # batch {1,2,4} x prompt {16,32}: one prefill and one decode compile per bucket
    assert sampler.trace_count == 2 * len(buckets) <= 12


def test_sample_token_distribution_and_filters():
    """Each lax.cond branch of sample_token: frequencies follow softmax(logits / T); top-k / top-p keep exactly the
    expected support; greedy is argmax; logp is under the tempered, unfiltered logits (the raw ones when greedy)."""
    from agro_jax.rollout.sampler import sample_token

    n = 4000
    logits_V = jnp.log(jnp.asarray([0.5, 0.25, 0.15, 0.1]))
    logits_BxV = jnp.broadcast_to(logits_V, (n, 4))
    f = jax.jit(sample_token)
    for temp, top_p, top_k, probs in [
        (1.0, 1.0, 0, [0.5, 0.25, 0.15, 0.1]),
        (0.5, 1.0, 0, np.asarray([0.5, 0.25, 0.15, 0.1]) ** 2 / np.sum(np.asarray([0.5, 0.25, 0.15, 0.1]) ** 2)),
        (1.0, 1.0, 2, [2 / 3, 1 / 3, 0, 0]),
        (1.0, 0.7, 0, [2 / 3, 1 / 3, 0, 0]),  # 0.5 < 0.7: the second token is needed to reach top_p
        (1.0, 0.9, 3, [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0]),
        (0.0, 1.0, 0, [1, 0, 0, 0]),
    ]:
        tok_B, logp_B = f(logits_BxV, jax.random.key(7), temp, top_p, top_k)
        freq = np.bincount(np.asarray(tok_B), minlength=4) / n
        np.testing.assert_allclose(freq, probs, atol=0.03, err_msg=f"T={temp} top_p={top_p} top_k={top_k}")
        assert np.all(freq[np.asarray(probs) == 0] == 0)
        logz_V = np.asarray(jax.nn.log_softmax(logits_V / (temp if temp > 0 else 1.0)))
        np.testing.assert_allclose(np.asarray(logp_B), logz_V[np.asarray(tok_B)], atol=1e-6)
