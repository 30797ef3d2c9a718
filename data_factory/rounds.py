"""The factory's round loop, resumable: rounds of (synthesize -> verify in batches -> dedup into the pool).

Each round sizes its per-template weights by how far each difficulty bucket is below its target (times `oversample`)
and boosts templates whose candidates were hard in the previous round (rejected by the check, or needing more than one
check cycle), so later rounds re-synthesize exactly the under-filled and hard cases. After every verification batch
the whole loop state goes to <out>/state/factory.json (factory_state.py), so a killed run continues at the first
unfinished batch. A progress bar per round counts candidates (ex/s) and shows how many were verified so far.

    st = run_rounds(fcfg, contexts, verifier, seed, state_path, components)  # st["pool"]: verified Candidates
"""

from __future__ import annotations

import collections
import math
import random
import time

from tqdm import tqdm

from data_factory import diversity
from data_factory import factory_state as fs
from data_factory.synth_sql import LEVELS, synthesize
from data_factory.templates import TEMPLATES


def _get(cfg, key, default):
    return cfg[key] if key in cfg else default


def _weights(pool, target_counts, oversample, hard_rate):
    have = collections.Counter(c.difficulty for c in pool)
    deficit = {lv: max(0.0, math.ceil(target_counts.get(lv, 0) * oversample) - have[lv]) for lv in LEVELS}
    if not any(deficit.values()):
        return None
    per_level = collections.Counter(t.level for t in TEMPLATES)
    return {
        t.name: deficit[t.level] / per_level[t.level] * (1.0 + hard_rate.get(t.name, 0.0)) + 1e-3 for t in TEMPLATES
    }


def _start_round(st, fcfg, contexts, pool, rng, targets, log) -> dict | None:
    r = st["next_round"]
    weights = _weights(pool, targets, float(_get(fcfg, "oversample", 1.3)), st["hard_rate"])
    if weights is None:
        log(f"[factory] round {r}: every difficulty bucket is full; stopping early")
        return None
    per_db = max(1, int(fcfg.candidates_per_round) // len(contexts))
    cands = [c for name in contexts for c in synthesize(contexts[name], per_db, rng, weights)]
    known = {(c.db_id, c.sql) for c in pool}
    fresh = [c for c in cands if (c.db_id, c.sql) not in known]
    fresh, _ = diversity.dedup(fresh, max_per_query=10**9)  # exact duplicates inside the round
    return dict(round=r, candidates=len(cands), fresh=[fs.to_dict(c) for c in fresh], done=0, accepted=[],
                reasons={}, seconds=0.0, accepted_by_cycle={})  # fmt: skip


def _finish_round(st, cur, fresh, pool, fcfg, log):
    """Hard-template rates, dedup into the pool, the round's record; returns the new pool."""
    acc = set(cur["accepted"])
    hard, total = collections.Counter(), collections.Counter(c.template for c in fresh)
    for i, c in enumerate(fresh):  # rejected by the generation-as-check or accepted only after regeneration
        if (i in acc and c.cycles > 1) or (i not in acc and c.cycles >= 1):
            hard[c.template] += 1
    st["hard_rate"] = {t: hard[t] / total[t] for t in total}
    before = len(pool)
    pool, dropped = diversity.dedup(pool + [fresh[i] for i in cur["accepted"]], int(_get(fcfg, "max_per_query", 1)))
    reasons = collections.Counter(st["reasons"])
    reasons.update(cur["reasons"])
    reasons["duplicate"] += dropped + (cur["candidates"] - len(fresh))
    st["reasons"] = dict(reasons)
    secs = cur["seconds"]
    st["rounds"].append(dict(
        round=cur["round"] + 1, candidates=cur["candidates"], checked=len(fresh), verified=len(cur["accepted"]),
        new_in_pool=len(pool) - before, rejected=dict(cur["reasons"]), accepted_by_cycle=cur["accepted_by_cycle"],
        seconds=round(secs, 2), candidates_per_s=round(len(fresh) / secs, 3) if secs else None,
        verified_per_s=round(len(cur["accepted"]) / secs, 3) if secs else None,
        pool_histogram=diversity.histogram(pool),
    ))  # fmt: skip
    log(f"[factory] round {cur['round'] + 1}: {cur['candidates']} candidates, {len(cur['accepted'])} verified, "
        f"pool {len(pool)} ({secs:.1f} s)")  # fmt: skip
    return pool


def run_rounds(fcfg, contexts, verifier, seed: int, state_path: str, components: dict, log=print,
               restart: bool = False) -> dict:  # fmt: skip
    """The loop state after the last round (resumed from state_path unless restart): pool (Candidates), reasons,
    rounds, audit (one entry per verified candidate, with its round), seconds (over all runs), runs."""
    fp = fs.fingerprint(fcfg, seed, components)
    rng = random.Random(seed)
    st = None if restart else fs.load(state_path, fp, log)
    if st is None:
        st = fs.fresh(fp, rng)
    else:
        fs.set_rng_state(rng, st["rng"])
        log(f"[factory] resuming from {state_path}: round {st['next_round'] + 1}"
            + (f", {st['current']['done']} candidates of it done" if st["current"] else ""))  # fmt: skip
    st["runs"] += 1
    t_run, saved_seconds = time.perf_counter(), st["seconds"]
    pool = [fs.from_dict(d) for d in st["pool"]]
    targets = diversity.target_counts(dict(fcfg.target_mix), int(fcfg.num_examples))
    batch = max(1, int(_get(fcfg, "verify_batch", 100)))

    def save():
        st["pool"] = [fs.to_dict(c) for c in pool]
        st["seconds"] = saved_seconds + time.perf_counter() - t_run
        fs.save(state_path, st)

    while st["next_round"] < int(fcfg.rounds) and not st["stopped"]:
        if st["current"] is None:
            st["current"] = _start_round(st, fcfg, contexts, pool, rng, targets, log)
            st["stopped"], st["rng"] = st["current"] is None, fs.rng_state(rng)
            save()
            if st["stopped"]:
                break
        cur = st["current"]
        fresh = [fs.from_dict(d) for d in cur["fresh"]]
        bar = tqdm(total=len(fresh), initial=cur["done"], unit="ex",
                   desc=f"factory round {cur['round'] + 1}/{fcfg.rounds}")  # fmt: skip
        for s in range(cur["done"], len(fresh), batch):
            t0 = time.perf_counter()
            part = fresh[s : s + batch]
            _, counts = verifier.verify(part)
            for k, (c, a) in enumerate(zip(part, verifier.audit, strict=True)):
                st["audit"].append(dict(a, round=cur["round"] + 1))
                if a["status"] == "accepted":
                    cur["accepted"].append(s + k)
                    cyc = str(c.cycles)
                    cur["accepted_by_cycle"][cyc] = cur["accepted_by_cycle"].get(cyc, 0) + 1
                cur["fresh"][s + k] = fs.to_dict(c)
            cur["reasons"] = dict(collections.Counter(cur["reasons"]) + counts)
            cur["done"], cur["seconds"] = s + len(part), cur["seconds"] + time.perf_counter() - t0
            save()
            bar.update(len(part))
            bar.set_postfix(verified=len(cur["accepted"]))
        bar.close()
        pool = _finish_round(st, cur, fresh, pool, fcfg, log)
        st["current"], st["next_round"] = None, st["next_round"] + 1
        save()
    st["pool"] = pool
    return st
