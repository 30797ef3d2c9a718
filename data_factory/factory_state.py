"""Resumable factory runs: the round loop's whole state, written atomically after every verification batch.

<out>/state/factory.json holds the config fingerprint, the next round, the synthesis RNG state, the verified pool,
rejection counts, per-round records, the hard-template rates, the audit of every verified candidate, and the round in
progress (its candidates as synthesized and updated by verification, how many are done, which were accepted). A
killed run (even SIGKILL mid-batch) restarts at the first unfinished batch; since synthesis is seeded and the model's
sampling keys are a hash of its prompts, the resumed run writes what an uninterrupted one would have. A state from a
different config (fingerprint: config.factory, seed, components) is moved aside to state/factory.prev.json.

    st = load(path, fp, log) or fresh(fp, rng)
    ... st["pool"] = [to_dict(c) for c in pool]; save(path, st)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from data_factory.synth_sql import Candidate

VERSION = 1


def fingerprint(fcfg, seed: int, components: dict) -> str:
    cfg = fcfg.to_dict() if hasattr(fcfg, "to_dict") else dict(fcfg)
    blob = json.dumps(dict(cfg=cfg, seed=int(seed), components=components, v=VERSION), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def to_dict(c: Candidate) -> dict:
    return dataclasses.asdict(c)


def from_dict(d: dict) -> Candidate:
    return Candidate(**d)


def rng_state(rng) -> list:
    v, internal, gauss = rng.getstate()
    return [v, list(internal), gauss]


def set_rng_state(rng, state: list) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


def fresh(fp: str, rng) -> dict:
    return dict(version=VERSION, fingerprint=fp, next_round=0, stopped=False, rng=rng_state(rng), pool=[],
                reasons={}, rounds=[], hard_rate={}, current=None, audit=[], seconds=0.0, runs=0)  # fmt: skip


def save(path: str, state: dict) -> None:
    """tmp file + fsync + rename: a reader (or a resumed run) sees the previous state or this one, never a mix."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: str, fp: str, log=print) -> dict | None:
    """The saved state if it is this config's; None (after moving a foreign or unreadable one aside) otherwise."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        state, why = None, f"unreadable ({e})"
    else:
        why = "from a different config" if state.get("fingerprint") != fp else ""
    if state is None or why:
        prev = path[: -len(".json")] + ".prev.json"
        os.replace(path, prev)
        log(f"[factory] state {path} is {why}; moved to {prev}, starting fresh")
        return None
    return state
