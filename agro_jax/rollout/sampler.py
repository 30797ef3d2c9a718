"""Jitted KV-cache sampler: batched left-padded prefill + lax.while_loop decode with per-sequence stop.

Shapes are bucketed (batch and prompt length to powers of two, new tokens fixed per Sampler), so a training run
compiles a handful of programs; params go in as an explicit argument (nnx.split state), so new params never
recompile. Sampling knobs (temperature, top_p, top_k) are traced scalars: changing them does not recompile either;
temperature <= 0 means greedy.

Stop handling: EOS and every stop string that the tokenizer encodes as ONE token (the embedded tokenizer adds the agent
tags as single tokens) become stop ids checked on device, so finished rows stop and the loop exits when all rows are
done. A stop string that is several tokens (general tokenizers) is found on host after decoding: the completion is cut
right after the shortest token prefix whose text contains it (the device loop then runs to max_new_tokens; correct,
just slower).

Returned logprobs: logp_t = log_softmax(raw logits)[token_t], i.e. under the policy at temperature 1 with no top-k/p
filtering. That is exactly what grpo.sequence_logprobs recomputes from the same params, so old/new ratios are 1 at the
first update; it is NOT the probability under the tempered/truncated sampling distribution.

Multi-process (jax.process_count() > 1, params global arrays on a mesh): every host passes its own prompts, the
hosts agree on the bucket (process_max), the prompt rows become one batch-sharded global array (multihost.place_batch)
and each host gets its own rows back. The call is collective: every host must call generate the same number of
times (a host with nothing to generate passes a dummy prompt; rollout.run_rollouts does).

The KV cache is allocated inside the jitted call and threaded through the while_loop, so XLA updates it in place
(nothing crosses the jit boundary to donate). `model_fn`/`init_cache` are pluggable (tests force scripted transcripts).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def next_pow2(n: int, minimum: int = 1) -> int:
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


@dataclasses.dataclass
class SampleOutput:
    tokens: list[list[int]]  # generated ids per row, up to and including the stop token
    logps: list[list[float]]  # logp of each generated token (temperature 1, unfiltered)
    stopped: list[bool]  # True: ended on EOS / a stop string; False: hit max_new_tokens


def _filter_top_k_top_p(scaled_BxV, top_p, top_k):
    """-inf outside the top_k tokens and outside the smallest prefix of sorted tokens whose mass reaches top_p."""
    v = scaled_BxV.shape[-1]
    sorted_BxV = jnp.sort(scaled_BxV, axis=-1)[:, ::-1]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
    kth = jnp.take_along_axis(sorted_BxV, jnp.broadcast_to(k - 1, (scaled_BxV.shape[0], 1)), axis=-1)
    probs = jax.nn.softmax(sorted_BxV, axis=-1)
    cum_before = jnp.cumsum(probs, axis=-1) - probs  # top-p always keeps at least the first token
    pth = jnp.min(jnp.where(cum_before < top_p, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    return jnp.where((scaled_BxV >= kth) & (scaled_BxV >= pth), scaled_BxV, -jnp.inf)


def sample_token(logits_BxV, rng, temperature, top_p, top_k):
    """One token per row from tempered, top-k/top-p filtered logits (greedy when temperature <= 0) and its logp under
    the raw logits. Branches are lax.cond on the traced knobs, so greedy decoding skips the sampling work and plain
    sampling skips the vocab sort (a full sort of B x V is most of a small model's decode step on CPU)."""
    logits_BxV = logits_BxV.astype(jnp.float32)
    v = logits_BxV.shape[-1]

    def sample(logits_BxV):
        scaled = logits_BxV / jnp.maximum(temperature, 1e-6)
        needs_filter = ((top_k > 0) & (top_k < v)) | (top_p < 1.0)
        scaled = jax.lax.cond(needs_filter, lambda x: _filter_top_k_top_p(x, top_p, top_k), lambda x: x, scaled)
        return jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)

    greedy = lambda x: jnp.argmax(x, axis=-1).astype(jnp.int32)  # noqa: E731
    tok_B = jax.lax.cond(temperature > 0, sample, greedy, logits_BxV)
    logp_B = jnp.take_along_axis(jax.nn.log_softmax(logits_BxV, -1), tok_B[:, None], axis=-1)[:, 0]
    return tok_B, logp_B


def _params_mesh(params):
    """The mesh the (global, multi-process) params live on."""
    for x in jax.tree.leaves(params):
        if isinstance(getattr(x, "sharding", None), jax.sharding.NamedSharding):
            return x.sharding.mesh
    raise ValueError("multi-process sampling needs params placed on a mesh (NamedSharding global arrays)")


class Sampler:
    """`Sampler(graphdef, rest, model_cfg, tokenizer, rollout_cfg)`; `generate(params, prompts, rng) -> SampleOutput`.

    model_fn(params, tokens_BxT, positions_BxT, mask_BxTxS, cache, cache_index) -> (logits_BxTxV, cache) and
    init_cache(batch, max_len) -> cache default to the Qwen model (nnx.merge(graphdef, params, rest)) and KVCache.init.
    """

    def __init__(
        self, graphdef, rest, model_cfg, tokenizer, rollout_cfg, *, model_fn=None, init_cache=None, stop_strings=None
    ):
        """tokenizer None: raw token ids, pad 0, no stops (benchmarks). stop_strings default: agent.STOP_STRINGS."""
        from agro_jax.rollout.agent import STOP_STRINGS

        self.tokenizer, self.cfg = tokenizer, rollout_cfg
        self.max_new_tokens = int(rollout_cfg.max_new_tokens_per_turn)
        self.min_prompt_bucket = int(rollout_cfg.get("min_prompt_bucket", 64))
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else 0)
        stop_ids, self.stop_strings = [], []
        if tokenizer is not None:
            if tokenizer.eos_token_id is not None:
                stop_ids.append(int(tokenizer.eos_token_id))
            for s in STOP_STRINGS if stop_strings is None else stop_strings:
                ids = tokenizer.encode(s, add_special_tokens=False)
                (stop_ids if len(ids) == 1 else self.stop_strings).extend(ids[:1] if len(ids) == 1 else [s])
        self.stop_ids = tuple(sorted(set(stop_ids)))
        if model_fn is None:
            from agro_jax.model.kv_cache import KVCache

            def model_fn(params, tokens, positions, mask, cache, cache_index):
                return nnx.merge(graphdef, params, rest)(tokens, positions, mask, cache, cache_index)

            def init_cache(batch, max_len):
                return KVCache.init(model_cfg, batch, max_len, model_cfg.dtype)

        self.model_fn, self.init_cache = model_fn, init_cache
        self.trace_count = 0  # number of times _generate was traced (= compiles); tests bound it
        self._jit = jax.jit(self._generate, static_argnames=("max_new",))

    def _generate(self, params, prompt_BxP, valid_BxP, rng, temperature, top_p, top_k, *, max_new: int):
        from agro_jax.model.qwen import make_causal_mask, positions_from_valid

        self.trace_count += 1
        b, p = prompt_BxP.shape
        s = p + max_new
        stop = jnp.asarray(self.stop_ids or (-1,), jnp.int32)
        cache = self.init_cache(b, s)
        pos_BxP = positions_from_valid(valid_BxP)
        mask_BxPxS = jnp.concatenate([make_causal_mask(valid_BxP), jnp.zeros((b, p, max_new), bool)], -1)
        logits, cache = self.model_fn(params, prompt_BxP, pos_BxP, mask_BxPxS, cache, 0)
        tok_B, logp_B = sample_token(logits[:, -1], jax.random.fold_in(rng, 0), temperature, top_p, top_k)
        toks_BxN = jnp.full((b, max_new), self.pad_id, jnp.int32).at[:, 0].set(tok_B)
        logps_BxN = jnp.zeros((b, max_new), jnp.float32).at[:, 0].set(logp_B)
        done_B = jnp.isin(tok_B, stop)
        kv_valid_BxS = jnp.concatenate([valid_BxP, jnp.zeros((b, max_new), bool)], -1)
        last_pos_B = pos_BxP[:, -1]

        def cond(c):
            i, _, _, _, _, done_B = c
            return (i < max_new) & ~jnp.all(done_B)

        def body(c):  # feeds token i-1 (slot p+i-1), samples token i
            i, cache, kv_valid_BxS, toks_BxN, logps_BxN, done_B = c
            slot = p + i - 1
            kv_valid_BxS = jax.lax.dynamic_update_slice(kv_valid_BxS, jnp.ones((b, 1), bool), (0, slot))
            prev_Bx1 = jax.lax.dynamic_slice(toks_BxN, (0, i - 1), (b, 1))
            logits, cache = self.model_fn(
                params, prev_Bx1, (last_pos_B + i)[:, None], kv_valid_BxS[:, None, :], cache, slot
            )
            tok_B, logp_B = sample_token(logits[:, -1], jax.random.fold_in(rng, i), temperature, top_p, top_k)
            tok_B = jnp.where(done_B, self.pad_id, tok_B)
            logp_B = jnp.where(done_B, 0.0, logp_B)
            toks_BxN = jax.lax.dynamic_update_slice(toks_BxN, tok_B[:, None], (0, i))
            logps_BxN = jax.lax.dynamic_update_slice(logps_BxN, logp_B[:, None], (0, i))
            return i + 1, cache, kv_valid_BxS, toks_BxN, logps_BxN, done_B | jnp.isin(tok_B, stop)

        init = (jnp.int32(1), cache, kv_valid_BxS, toks_BxN, logps_BxN, done_B)
        _, _, _, toks_BxN, logps_BxN, done_B = jax.lax.while_loop(cond, body, init)
        return toks_BxN, logps_BxN

    def generate(self, params, prompts, rng, *, temperature=None, top_p=None, top_k=None, max_new_tokens=None):
        """prompts: list of token-id lists (any lengths) -> SampleOutput (host lists, one entry per prompt)."""
        if not prompts or any(len(x) == 0 for x in prompts):
            raise ValueError("Sampler.generate: prompts must be a non-empty list of non-empty token lists")
        cfg = self.cfg
        temperature = float(cfg.temperature if temperature is None else temperature)
        top_p = float(cfg.get("top_p", 1.0) if top_p is None else top_p)
        top_k = int(cfg.get("top_k", 0) if top_k is None else top_k)
        max_new = int(max_new_tokens or self.max_new_tokens)
        n, longest = len(prompts), max(len(x) for x in prompts)
        mesh = _params_mesh(params) if jax.process_count() > 1 else None
        if mesh is not None:  # every host must trace the same shapes: bucket the largest n / prompt over hosts
            from agro_jax.scale import multihost

            n_max, longest = multihost.process_max([n, longest])
            per_host = max(1, math.prod(mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape))
            per_host = max(1, per_host // jax.process_count())
            b = -(-next_pow2(n_max) // per_host) * per_host  # this host's rows split evenly over its batch shards
        else:
            b = next_pow2(n)
        p = next_pow2(longest, self.min_prompt_bucket)
        prompt_BxP = np.full((b, p), self.pad_id, np.int32)
        valid_BxP = np.zeros((b, p), bool)
        for i, ids in enumerate(prompts):
            prompt_BxP[i, p - len(ids) :], valid_BxP[i, p - len(ids) :] = ids, True
        valid_BxP[n:, -1] = True  # bucket filler rows: one valid token so attention has a key
        if mesh is not None:
            prompt_BxP, valid_BxP = multihost.place_batch((prompt_BxP, valid_BxP), mesh)
        out_jit = self._jit(params, prompt_BxP, valid_BxP, rng, temperature, top_p, top_k, max_new=max_new)
        toks, logps = multihost.host_rows(out_jit, mesh) if mesh is not None else jax.device_get(out_jit)
        out = SampleOutput([], [], [])
        stop = set(self.stop_ids)
        for i in range(n):
            row = toks[i].tolist()
            end = next((j + 1 for j, t in enumerate(row) if t in stop), None)
            if end is None and self.stop_strings:
                end = self._host_stop(row)
            out.tokens.append(row[: end or max_new])
            out.logps.append(logps[i, : end or max_new].tolist())
            out.stopped.append(end is not None)
        return out

    def _host_stop(self, row: list[int]) -> int | None:
        """Length of the shortest prefix whose decoded text contains a multi-token stop string (None if none)."""
        text = self.tokenizer.decode(row)
        if not any(s in text for s in self.stop_strings):
            return None
        for j in range(1, len(row) + 1):
            if any(s in self.tokenizer.decode(row[:j]) for s in self.stop_strings):
                return j
        return None
