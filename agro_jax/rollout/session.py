"""A multi-turn KV session: the cache of one chunk of rollout rows, alive across turns.

    s = KVSession(sampler, params, prompts, group_size=G, row_ids=ids)   # each distinct prompt prefilled ONCE,
    out = s.decode({row: budget}, key)                                   # its cache copied to its G rows
    s.append(row, observation_ids)                                       # fed by the next decode's extend
    out = s.decode({row: budget}, key)                                   # only the new tokens are encoded

Host state per row: `lens` (tokens in the cache) and `pending` (tokens not in it yet: the last sampled token of a
turn, then its observation). A decode first extend-prefills every live row's pending tokens (one program for all of
them), then samples. Between turns the live rows are compacted into the next smaller power-of-two batch when they
fill at most half of it (finished rows then cost no more decode work), and the slot axis grows (powers of two, up to
the cap) only when a live row needs more room; single process only: with several hosts a compaction would move rows
across hosts, so finished rows stay (masked) and only the slot axis grows, by shapes agreed over the hosts.
"""

from __future__ import annotations

import jax
import numpy as np

from agro_jax.rollout.sampler import next_pow2, params_mesh


class KVSession:
    def __init__(self, sampler, params, prompts, *, group_size: int, row_ids, slot_cap: int, prefill_tokens: int):
        """prompts: one token list per group (may be empty: a host with nothing to do joins the collective calls);
        rows g*G .. g*G+G-1 continue prompt g. row_ids: one int per row (its sampling key). slot_cap: the most cache
        slots a row may use (a power of two); prefill_tokens: prompt tokens per prefill call (rows x padded length)."""
        from agro_jax.scale import multihost

        self.sampler, self.params, self.g = sampler, params, int(group_size)
        self.mesh = params_mesh(params) if jax.process_count() > 1 else None
        self.slot_cap = int(slot_cap)
        n = len(prompts) * self.g
        self.row_ids = np.asarray(row_ids, np.int32)
        if len(self.row_ids) != n:
            raise ValueError(f"KVSession: {len(self.row_ids)} row_ids for {n} rows")
        self.lens = np.asarray([len(p) for p in prompts for _ in range(self.g)], np.int64)
        self.pending: list[list[int]] = [[] for _ in range(n)]
        longest = max([len(p) for p in prompts] + [1])
        u_need = max(1, len(prompts))
        if self.mesh is not None:
            longest, u_need = multihost.process_max([longest, u_need])
        p = next_pow2(longest, sampler.min_prompt_bucket)
        if p > self.slot_cap:
            raise ValueError(f"KVSession: a prompt of {longest} tokens needs {p} slots > the cap of {self.slot_cap}")
        self.rb = sampler.row_bucket(max(n, 1), self.mesh)
        self.slots = min(self.slot_cap, next_pow2(longest + sampler.max_new_tokens, sampler.min_prompt_bucket))
        # prefill in calls of ub prompts (the attention scores of one call are ub x heads x P x P floats)
        ub = max(1, 1 << int(max(1, prefill_tokens // p)).bit_length() - 1)
        ub = min(ub, next_pow2(u_need))
        ub = sampler.row_bucket(ub, self.mesh) if self.mesh is not None else ub
        calls = -(-u_need // ub)
        self.slot_of = np.arange(n)  # row -> its index in the device batch (-1: dropped by compaction)
        # what the device did: real tokens encoded (each distinct prompt once), padded positions run, decode row-steps
        self.stats = dict(prefill_tokens=sum(len(x) for x in prompts), prefill_padded=calls * ub * p,
                          extend_tokens=0, extend_padded=0, decode_fed=0, decode_steps=0, decode_row_steps=0,
                          layouts=[])  # fmt: skip
        caches, logits = [], []
        for c in range(calls):
            tok = np.full((ub, p), sampler.pad_id, np.int32)
            last = np.zeros(ub, np.int32)
            for j, ids in enumerate(prompts[c * ub : (c + 1) * ub]):
                tok[j, : len(ids)], last[j] = ids, len(ids) - 1
            args = self._place((tok, np.zeros(ub, np.int32), last))
            cache_u, logits_u = sampler.prefill(params, *args, slots=p)
            caches.append(cache_u)
            logits.append(logits_u)
        # row -> its prompt in the prefill outputs concatenated in call order (a call holds ub rows of every host, host
        # h's at [h*ub, (h+1)*ub)); filler rows copy prompt 0 (they never decode)
        hosts, h = jax.process_count(), jax.process_index()
        groups = np.arange(self.rb) // self.g
        groups[n:] = 0
        c, j = np.divmod(groups, ub)
        src = (c * ub * hosts + h * ub + j).astype(np.int32)
        cache_u, logits_u = caches[0], logits[0]
        if calls > 1:
            cache_u, logits_u = sampler.concat_rows(caches, logits)
        self.cache, self.logits = sampler.rows(cache_u, logits_u, self._place(src), slots=self.slots)
        self.start = np.zeros(self.rb, np.int32)

    # -------------------------------------------------------------------------------------------------- host API

    def append(self, row: int, ids) -> None:
        """Tokens that follow row `row`'s last turn (an observation); encoded by the next decode."""
        self.pending[row] += [int(t) for t in ids]

    def decode(self, budgets: dict, key, knobs):
        """Samples one turn for the rows in `budgets` (row -> max new tokens >= 1) -> {row: (tokens, logps, kind)}."""
        from agro_jax.scale import multihost

        s = self.sampler
        live = sorted(budgets)
        if any(self.slot_of[r] < 0 for r in live):
            raise ValueError("KVSession.decode: a row dropped by an earlier compaction cannot decode again")
        need = max([int(self.lens[r] + len(self.pending[r]) + budgets[r]) for r in live] + [1])
        longest_new = max([len(self.pending[r]) for r in live] + [0])
        if self.mesh is not None:
            need, longest_new = multihost.process_max([need, longest_new])
        self._layout(live, min(self.slot_cap, next_pow2(need, s.min_prompt_bucket)))
        lens_d = np.zeros(self.rb, np.int32)
        budget_d = np.zeros(self.rb, np.int32)
        ids_d = np.zeros(self.rb, np.int32)
        for r in np.flatnonzero(self.slot_of >= 0):
            lens_d[self.slot_of[r]], ids_d[self.slot_of[r]] = self.lens[r], self.row_ids[r]
        if longest_new:
            t = next_pow2(longest_new, 16)
            new = np.full((self.rb, t), s.pad_id, np.int32)
            n_new = np.zeros(self.rb, np.int32)
            for r in live:
                k = len(self.pending[r])
                new[self.slot_of[r], :k], n_new[self.slot_of[r]] = self.pending[r], k
            args = self._place((self.start, lens_d, new, n_new))
            self.cache, self.logits = s.extend(self.params, self.cache, self.logits, *args)
            self.stats["extend_tokens"] += int(n_new.sum())
            self.stats["extend_padded"] += self.rb * t
            lens_d = lens_d.copy()  # never write to an array a dispatched computation may still read (zero-copy)
            for r in live:
                self.lens[r] += len(self.pending[r])
                lens_d[self.slot_of[r]] = self.lens[r]
                self.pending[r] = []
        for r in live:
            budget_d[self.slot_of[r]] = budgets[r]
        args = self._place((self.start.copy(), lens_d, budget_d, ids_d))
        start_d, lens_d, budget_d, ids_d = args
        out = s.decode(self.params, self.cache, start_d, lens_d, self.logits, budget_d, ids_d, key, knobs,
                       max_new=s.max_new_tokens)  # fmt: skip
        self.cache = out[0]
        toks, logps, n_gen, kinds = multihost.host_rows(out[1:], self.mesh) if self.mesh else jax.device_get(out[1:])
        steps = int(n_gen.max(initial=0))
        self.stats["decode_steps"] += steps
        self.stats["decode_row_steps"] += steps * self.rb
        self.stats["layouts"].append((self.rb, self.slots))
        res = {}
        for r in live:
            i, k = self.slot_of[r], int(n_gen[self.slot_of[r]])
            res[r] = (toks[i, :k].tolist(), logps[i, :k].tolist(), int(kinds[i]))
            if k:
                self.stats["decode_fed"] += k - 1
                self.lens[r] += k - 1
                self.pending[r] = [int(toks[i, k - 1])]
        return res

    # ------------------------------------------------------------------------------------------------- internals

    def _layout(self, live, slots: int) -> None:
        """Compacts to the live rows when they fill at most half the batch (single process) and grows the slots."""
        rb = self.rb
        if self.mesh is None and len(live) <= rb // 2:
            rb = next_pow2(max(1, len(live)))
        if rb == self.rb and slots <= self.slots:
            return
        src, slot_of = None, self.slot_of  # None: the rows stay, only the slot axis grows (no gather)
        if rb != self.rb:
            src = np.zeros(rb, np.int32)
            src[: len(live)] = self.slot_of[live]
            src[len(live) :] = self.slot_of[live[0]] if live else 0
            slot_of = np.full_like(self.slot_of, -1)
            slot_of[live] = np.arange(len(live))
        slots = max(slots, self.slots)
        self.cache, self.logits = self.sampler.rows(self.cache, self.logits, src, slots=slots)
        self.rb, self.slots, self.slot_of = rb, slots, slot_of
        self.start = np.zeros(rb, np.int32)

    def _place(self, tree):
        from agro_jax.scale import multihost

        return multihost.place_batch(tree, self.mesh) if self.mesh is not None else tree
