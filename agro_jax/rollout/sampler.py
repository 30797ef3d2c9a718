"""Jitted KV-cache programs of the rollout engine: prefill, extend, decode, row moves; plus single-turn `generate`.

Cache layout: row r's tokens are contiguous slots [start_r, lens_r) of a KVCache (model/kv_cache.py) and the token in
slot s has RoPE position s - start_r; each row writes at its own slot (per-row cache index). The programs:
- `prefill`: U prompts (right-padded, start 0; or left-padded, start P - n) -> their cache and logits at each
  prompt's last token only: hidden states are computed at every position, the lm_head only where a token is sampled
  (never U x P x V).
- `extend`: appends T new tokens per row (the previous turn's last token + an observation) after slot lens_r, and
  gives the logits at each row's last new token: a conversation is never encoded twice.
- `decode`: samples a turn: a lax.while_loop feeding one token per live row, per-row stop on EOS ids, on a stop
  string completed by the token (rollout/stops.py, bytes matched on device) or on the row's token budget; the loop
  exits when every row is done.
- `rows`: gathers rows (G samples of one prefilled prompt; the live rows after a turn) and grows the slot axis.

Shapes are bucketed by the caller (rows, prompt/extension length, slots: powers of two), so a run compiles a handful
of programs; params are an explicit argument (new params never recompile). Sampling knobs are traced scalars
(temperature <= 0: greedy). Every row samples with its own key, fold_in(fold_in(turn_key, row_id), step): results do
not depend on the batch a row shares, on its position in it, on chunking or on compaction.

Returned logprobs: logp_t = log_softmax(logits / temperature)[token_t] (raw logits when greedy), the tempered policy
with no top-k/p filtering, computed from the same logits that sampled the token: exactly what
grpo.sequence_logprobs(temperature=...) recomputes from the same params (ratio 1 at the first update), and the
sampling probability itself whenever top-k/p are off.

Multi-process (params global arrays on a mesh): every host passes its own rows; the caller agrees shapes over hosts
(multihost.process_max), inputs become batch-sharded global arrays (multihost.place_batch) and each host reads its
own rows back. Calls are collective: every host calls the same programs in the same order.

`model_fn(params, tokens_BxT, positions_BxT, mask_BxTxS, cache, cache_index) -> (logits_BxTxV or Bx1xV, cache)` (or,
with a `last_B` keyword, -> (logits_BxV at position last_B[b], cache)) and `init_cache(batch, max_len)` are pluggable
(tests force scripted transcripts). The default runs Qwen.hidden and
Qwen.logits at the sampled positions; a custom model_fn returning only the last position's logits serves `generate`
(left-padded: the last position is every row's last token) but not multi-turn sessions.
"""

from __future__ import annotations

import collections
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from agro_jax.rollout import stops as stops_lib


def next_pow2(n: int, minimum: int = 1) -> int:
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


class SampleOutput:
    """Per row: generated ids up to and including the stop token, their logps (tempered, unfiltered), whether
    the row stopped (EOS / stop string) rather than hitting its budget, and how: 0 budget, 1 stop id, 2 stop string."""

    def __init__(self, tokens, logps, stopped, kinds=None):
        self.tokens, self.logps, self.stopped = tokens, logps, stopped
        self.kinds = kinds if kinds is not None else [int(s) for s in stopped]


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


def sample_token(logits_BxV, keys, temperature, top_p, top_k):
    """One token per row from tempered, top-k/top-p filtered logits (greedy when temperature <= 0) and its logp under
    the tempered, unfiltered logits (the raw ones when greedy). keys: one key per row [B] (or a single key, split
    over the rows). Branches are lax.cond on the traced knobs, so greedy decoding skips the sampling work and plain
    sampling skips the vocab sort."""
    logits_BxV = logits_BxV.astype(jnp.float32)
    b, v = logits_BxV.shape
    if keys.ndim == 0:
        keys = jax.random.split(keys, b)

    def sample(logits_BxV):
        scaled = logits_BxV / jnp.maximum(temperature, 1e-6)
        needs_filter = ((top_k > 0) & (top_k < v)) | (top_p < 1.0)
        scaled = jax.lax.cond(needs_filter, lambda x: _filter_top_k_top_p(x, top_p, top_k), lambda x: x, scaled)
        return jax.vmap(lambda k, x: jax.random.categorical(k, x))(keys, scaled).astype(jnp.int32)

    greedy = lambda x: jnp.argmax(x, axis=-1).astype(jnp.int32)  # noqa: E731
    tok_B = jax.lax.cond(temperature > 0, sample, greedy, logits_BxV)
    tempered_BxV = logits_BxV / jnp.where(temperature > 0, temperature, 1.0)
    logp_B = jnp.take_along_axis(jax.nn.log_softmax(tempered_BxV, -1), tok_B[:, None], axis=-1)[:, 0]
    return tok_B, logp_B


def params_mesh(params):
    """The mesh the (global, multi-process) params live on."""
    for x in jax.tree.leaves(params):
        if isinstance(getattr(x, "sharding", None), jax.sharding.NamedSharding):
            return x.sharding.mesh
    raise ValueError("multi-process sampling needs params placed on a mesh (NamedSharding global arrays)")


def _mask(start_R, pos_RxT, s: int):
    """mask_RxTxS: query at slot pos[r, t] attends slots [start_r, pos[r, t]]."""
    slots_S = jnp.arange(s, dtype=jnp.int32)
    return (slots_S[None, None, :] >= start_R[:, None, None]) & (slots_S[None, None, :] <= pos_RxT[..., None])


class Sampler:
    """`Sampler(graphdef, rest, model_cfg, tokenizer, rollout_cfg)`: the device programs (module docstring) and
    `generate(params, prompts, rng) -> SampleOutput` (one turn); multi-turn sessions live in rollout/session.py."""

    def __init__(
        self, graphdef, rest, model_cfg, tokenizer, rollout_cfg, *, model_fn=None, init_cache=None, stop_strings=None
    ):
        """tokenizer None: raw token ids, pad 0, no stops (benchmarks). stop_strings default: agent.STOP_STRINGS.
        A row ends on EOS or the pad token (end_ids; kind 1) or on the token completing a stop string, matched as bytes
        on device in any tokenization (kind 2). stop_ids: end_ids plus the stop strings that are one token."""
        from agro_jax.rollout.agent import STOP_STRINGS

        self.tokenizer, self.cfg = tokenizer, rollout_cfg
        self.max_new_tokens = int(rollout_cfg.max_new_tokens_per_turn)
        self.min_prompt_bucket = int(rollout_cfg.get("min_prompt_bucket", 64))
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else 0)
        stop_ids, self.stop_strings = [], ()
        if tokenizer is not None:
            stop_ids += [int(t) for t in (tokenizer.eos_token_id, pad) if t is not None]
        self.end_ids = tuple(sorted(set(stop_ids)))  # kind 1: end of text; stop strings (any spelling) are kind 2
        if tokenizer is not None:
            self.stop_strings = tuple(STOP_STRINGS if stop_strings is None else stop_strings)
            for s in self.stop_strings:
                ids = tokenizer.encode(s, add_special_tokens=False)
                stop_ids += ids if len(ids) == 1 else []
        self.stop_ids = tuple(sorted(set(stop_ids)))
        tables = stops_lib.build_tables(tokenizer, self.stop_strings) if tokenizer is not None else None
        self._stop_bytes = tables.stops if tables is not None else ()
        self._tables = tables.device() if tables is not None else None
        self.last_only = model_fn is not None  # a custom model_fn may return only the last position's logits
        if model_fn is None:
            from agro_jax.model.kv_cache import KVCache

            def forward(params, tokens, positions, mask, cache, cache_index, last_B, last_is_end=True):
                model = nnx.merge(graphdef, params, rest)
                hidden_BxTxD, cache = model.hidden(tokens, positions, mask, cache, cache_index)
                picked_BxD = jnp.take_along_axis(hidden_BxTxD, last_B[:, None, None], axis=1)[:, 0]
                return model.logits(picked_BxD), cache

            def init_cache(batch, max_len):
                return KVCache.init(model_cfg, batch, max_len, model_cfg.dtype)
        else:
            picks = "last_B" in inspect.signature(model_fn).parameters

            def forward(params, tokens, positions, mask, cache, cache_index, last_B, last_is_end=True):
                if picks:  # the model_fn gives the logits at position last_B[b] of each row itself
                    return model_fn(params, tokens, positions, mask, cache, cache_index, last_B=last_B)
                logits, cache = model_fn(params, tokens, positions, mask, cache, cache_index)
                if logits.shape[1] == tokens.shape[1]:
                    return jnp.take_along_axis(logits, last_B[:, None, None], axis=1)[:, 0], cache
                if not last_is_end:
                    raise ValueError("Sampler: this model_fn returns only the last position's logits; multi-turn "
                                     "sessions need logits at every position (or the default model_fn)")  # fmt: skip
                return logits[:, -1], cache  # last position only: callers put every row's last token there

        self._forward, self.init_cache = forward, init_cache
        self.traces = collections.Counter()  # program name -> times traced (= compiles); tests bound them
        self.prefill = jax.jit(self._prefill, static_argnames=("slots",))
        self.extend = jax.jit(self._extend, donate_argnums=(1,))  # the cache is updated in place
        self.decode = jax.jit(self._decode, static_argnames=("max_new",), donate_argnums=(1,))
        self.rows = jax.jit(self._rows, static_argnames=("slots",))
        self.concat_rows = jax.jit(self._concat_rows)

    @property
    def trace_count(self) -> int:
        return sum(self.traces.values())

    # ------------------------------------------------------------------------------------------- device programs

    def _prefill(self, params, tok_UxP, start_U, last_U, *, slots: int):
        """-> (cache with `slots` slots holding the prompts, logits_UxV at each prompt's last token)."""
        self.traces["prefill"] += 1
        u, p = tok_UxP.shape
        pos_UxP = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (u, p))
        cache = self.init_cache(u, slots)
        mask = _mask(start_U, pos_UxP, slots)
        logits, cache = self._forward(
            params, tok_UxP, jnp.maximum(pos_UxP - start_U[:, None], 0), mask, cache, jnp.zeros(u, jnp.int32), last_U
        )
        return cache, logits

    def _extend(self, params, cache, logits_RxV, start_R, lens_R, new_RxT, n_new_R):
        """Appends new_RxT[r, :n_new_r] at slot lens_r -> (cache, logits at each row's last new token; rows with
        nothing new keep their logits_RxV)."""
        self.traces["extend"] += 1
        t = new_RxT.shape[1]
        pos_RxT = lens_R[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
        mask = _mask(start_R, pos_RxT, self._slots(cache))
        last = jnp.maximum(n_new_R - 1, 0)
        new_logits, cache = self._forward(
            params, new_RxT, pos_RxT - start_R[:, None], mask, cache, lens_R, last, last_is_end=False
        )
        return cache, jnp.where((n_new_R > 0)[:, None], new_logits, logits_RxV)

    def _decode(self, params, cache, start_R, lens_R, logits_RxV, budget_R, row_ids_R, key, knobs, *, max_new: int):
        """Samples up to budget_r <= max_new tokens per row, the first from logits_RxV. -> (cache, toks_RxN, logps_RxN,
        n_gen_R, kind_R: 0 budget / 1 stop id / 2 stop string). The last sampled token is NOT written to the cache
        (it is fed by the next extend), so afterwards row r holds lens_r + n_gen_r - 1 tokens."""
        self.traces["decode"] += 1
        r, s = lens_R.shape[0], self._slots(cache)
        keys_R = jax.vmap(jax.random.fold_in, (None, 0))(key, row_ids_R)
        end_ids = jnp.asarray(self.end_ids or (-1,), jnp.int32)
        m = self._tables["head_VxM"].shape[1] if self._tables is not None else 1

        def sample(logits, i, tail, n_gen, live):
            tok, lp = sample_token(logits, jax.vmap(jax.random.fold_in, (0, None))(keys_R, i), *knobs)
            if self._tables is not None:
                hit, tail = stops_lib.step(self._tables, self._stop_bytes, tail, tok)
            else:
                hit = jnp.zeros(r, bool)
            n_gen = n_gen + live
            kind = jnp.where(jnp.isin(tok, end_ids), 1, jnp.where(hit, 2, 0))
            return tok, lp, tail, n_gen, kind

        live0 = budget_R > 0
        tok, lp, tail, n_gen, kind = sample(logits_RxV, 0, stops_lib.init_tail(r, m), jnp.zeros(r, jnp.int32), live0)
        toks_RxN = jnp.full((r, max_new), self.pad_id, jnp.int32).at[:, 0].set(jnp.where(live0, tok, self.pad_id))
        logps_RxN = jnp.zeros((r, max_new), jnp.float32).at[:, 0].set(jnp.where(live0, lp, 0.0))
        kind = jnp.where(live0, kind, 0)
        done = ~live0 | (kind > 0) | (n_gen >= budget_R)

        def cond(c):
            return (c[0] < max_new) & ~jnp.all(c[-1])

        def body(c):  # feeds token i-1 at slot lens (live rows), samples token i
            i, cache, lens, tok, tail, toks, logps, n_gen, kind, done = c
            live = ~done
            logits, cache = self._forward(
                params, tok[:, None], (lens - start_R)[:, None], _mask(start_R, lens[:, None], s), cache, lens,
                jnp.zeros(r, jnp.int32),
            )  # fmt: skip
            lens = lens + live
            new_tok, lp, new_tail, n_gen, new_kind = sample(logits, i, tail, n_gen, live)
            tok = jnp.where(live, new_tok, tok)
            tail = jnp.where(live[:, None], new_tail, tail)
            toks = jax.lax.dynamic_update_slice(toks, jnp.where(live, new_tok, self.pad_id)[:, None], (0, i))
            logps = jax.lax.dynamic_update_slice(logps, jnp.where(live, lp, 0.0)[:, None], (0, i))
            kind = jnp.where(live, new_kind, kind)
            done = done | (kind > 0) | (n_gen >= budget_R)
            return i + 1, cache, lens, tok, tail, toks, logps, n_gen, kind, done

        init = (jnp.int32(1), cache, lens_R, tok, tail, toks_RxN, logps_RxN, n_gen, kind, done)
        _, cache, _, _, _, toks_RxN, logps_RxN, n_gen, kind, _ = jax.lax.while_loop(cond, body, init)
        return cache, toks_RxN, logps_RxN, n_gen, kind

    def _rows(self, cache, logits_RxV, src_R2, *, slots: int):
        """Rows src_R2 of the cache and logits (None: all rows, in place), the slot axis padded to `slots`."""
        self.traces["rows"] += 1
        if src_R2 is not None:
            logits_RxV = jnp.take(logits_RxV, src_R2, axis=0)
        if hasattr(cache, "take_rows"):
            return cache.take_rows(src_R2, slots), logits_RxV
        cache = cache if src_R2 is None else jnp.take(cache, src_R2, axis=0)  # a custom cache: one [B, S, ...] array
        return jnp.pad(cache, [(0, 0), (0, slots - cache.shape[1])] + [(0, 0)] * (cache.ndim - 2)), logits_RxV

    def _concat_rows(self, caches, logits):
        """Prefill outputs of several calls -> one batch (rows in call order)."""
        self.traces["concat"] += 1
        axis = 1 if hasattr(caches[0], "take_rows") else 0
        cache = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=axis), *caches)
        return cache, jnp.concatenate(logits, axis=0)

    @staticmethod
    def _slots(cache) -> int:
        return cache.max_len if hasattr(cache, "max_len") else cache.shape[1]

    # ---------------------------------------------------------------------------------------------- host helpers

    def knobs(self, temperature=None, top_p=None, top_k=None):
        cfg = self.cfg
        return (
            jnp.float32(cfg.temperature if temperature is None else temperature),
            jnp.float32(cfg.get("top_p", 1.0) if top_p is None else top_p),
            jnp.int32(cfg.get("top_k", 0) if top_k is None else top_k),
        )

    def row_bucket(self, n: int, mesh) -> int:
        """This host's padded row count: a power of two (the largest n over hosts), split evenly over its shards."""
        if mesh is None:
            return next_pow2(n)
        from agro_jax.scale import multihost

        (n_max,) = multihost.process_max([n])
        per_host = max(1, math.prod(mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape))
        per_host = max(1, per_host // jax.process_count())
        return -(-next_pow2(n_max) // per_host) * per_host

    def check_turn(self, text: str, kind: int, where: str = "") -> None:
        """Host recheck of the device stop matcher on one decoded turn (stops.check_text)."""
        if self.stop_strings and kind != 1:
            stops_lib.check_text(text, kind == 2, self.stop_strings, where)

    def generate(self, params, prompts, rng, *, temperature=None, top_p=None, top_k=None, max_new_tokens=None):
        """One turn: prompts (token-id lists, any lengths) -> SampleOutput (host lists, one entry per prompt)."""
        if not prompts or any(len(x) == 0 for x in prompts):
            raise ValueError("Sampler.generate: prompts must be a non-empty list of non-empty token lists")
        max_new = int(max_new_tokens or self.max_new_tokens)
        n, longest = len(prompts), max(len(x) for x in prompts)
        mesh = params_mesh(params) if jax.process_count() > 1 else None
        if mesh is not None:  # every host traces the same shapes
            from agro_jax.scale import multihost

            (longest,) = multihost.process_max([longest])
        b, p = self.row_bucket(n, mesh), next_pow2(longest, self.min_prompt_bucket)
        tok = np.full((b, p), self.pad_id, np.int32)
        start = np.full(b, p - 1, np.int32)  # bucket filler rows: one (pad) token
        for i, ids in enumerate(prompts):  # left-padded: every row's last token is at p - 1
            tok[i, p - len(ids) :], start[i] = ids, p - len(ids)
        lens, budget = np.full(b, p, np.int32), np.where(np.arange(b) < n, max_new, 0).astype(np.int32)
        row_ids = np.arange(b, dtype=np.int32) + (jax.process_index() << 20)
        place = (lambda t: multihost.place_batch(t, mesh)) if mesh is not None else (lambda t: t)
        tok, start_d, last, lens_d, budget_d, row_ids = place((tok, start, np.full(b, p - 1, np.int32), lens, budget,
                                                               row_ids))  # fmt: skip
        cache, logits = self.prefill(params, tok, start_d, last, slots=p + max_new)
        out = self.decode(params, cache, start_d, lens_d, logits, budget_d, row_ids, rng, self.knobs(temperature, top_p,
                          top_k), max_new=max_new)[1:]  # fmt: skip
        toks, logps, n_gen, kinds = multihost.host_rows(out, mesh) if mesh is not None else jax.device_get(out)
        res = SampleOutput([], [], [], [])
        for i in range(n):
            k = int(n_gen[i])
            res.tokens.append(toks[i, :k].tolist())
            res.logps.append(logps[i, :k].tolist())
            res.kinds.append(int(kinds[i]))
            res.stopped.append(int(kinds[i]) > 0)
            if self.tokenizer is not None:
                self.check_turn(self.tokenizer.decode(res.tokens[-1], skip_special_tokens=False), res.kinds[-1])
        return res
