"""Dedup, diversity-guided sampling to a difficulty mix, skeleton statistics and the held-out split.

- `dedup`: drops exact duplicates (same DB + normalized SQL) and keeps at most `max_per_query` examples per
  literal-masked query (same DB, same tables/columns/structure, only literals differ).
- `sample_mix`: picks `n` examples whose difficulty histogram matches `target_mix` (largest-remainder counts; when a
  bucket is short, the total shrinks so the mix still holds). Inside a bucket it walks skeleton clusters round-robin
  (identifier- and literal-masked SQL), so rare structures are taken before a common one repeats.
- `split_heldout`: whole skeleton (or db / query) groups go to test, per difficulty bucket, so no test structure is
  seen in training; or, by "literal", one example of a literal-masked query that has several goes to test, so every
  test query is seen in training with other literal values (new question, new literal, seen structure).
"""

from __future__ import annotations

import collections
import math
import random

from data_factory.synth_sql import LEVELS, skeleton


def query_key(c) -> tuple[str, str]:
    return c.db_id, skeleton(c.sql, mask_identifiers=False)


def dedup(cands: list, max_per_query: int = 1) -> tuple[list, int]:
    """(kept, dropped count); the first occurrence wins."""
    seen_sql, per_query, kept = set(), collections.Counter(), []
    for c in cands:
        k_sql, k_query = (c.db_id, " ".join(c.sql.split()).lower()), query_key(c)
        if k_sql in seen_sql or per_query[k_query] >= max_per_query:
            continue
        seen_sql.add(k_sql)
        per_query[k_query] += 1
        kept.append(c)
    return kept, len(cands) - len(kept)


def target_counts(target_mix: dict, n: int) -> dict[str, int]:
    """Largest-remainder rounding of n * mix (exactly n in total)."""
    total = sum(float(v) for v in target_mix.values())
    if total <= 0:
        raise ValueError(f"target_mix must have a positive total, got {dict(target_mix)}")
    raw = {k: n * float(v) / total for k, v in target_mix.items()}
    counts = {k: math.floor(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: (counts[k] - raw[k], k))[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def sample_mix(cands: list, target_mix: dict, n: int, seed: int = 0) -> list:
    unknown = set(target_mix) - set(LEVELS)
    if unknown:
        raise ValueError(f"target_mix has unknown difficulty levels {sorted(unknown)}; known: {LEVELS}")
    by_level = collections.defaultdict(list)
    for c in cands:
        by_level[c.difficulty].append(c)
    while n > 0 and any(by_level.get(k, []).__len__() < v for k, v in target_counts(target_mix, n).items()):
        n -= 1  # a short bucket: shrink the total rather than break the mix
    rng = random.Random(seed)
    out = []
    for level, k in target_counts(target_mix, n).items():
        clusters = collections.defaultdict(list)
        for c in by_level.get(level, []):
            clusters[c.skeleton].append(c)
        order = sorted(clusters)
        rng.shuffle(order)
        for key in order:
            rng.shuffle(clusters[key])
        picked, depth = [], 0
        while len(picked) < k:
            for key in order:
                if depth < len(clusters[key]) and len(picked) < k:
                    picked.append(clusters[key][depth])
            depth += 1
        out += picked
    return out


def histogram(examples, key=lambda e: e.difficulty) -> dict[str, int]:
    return dict(sorted(collections.Counter(key(e) for e in examples).items()))


def mix_error(examples, target_mix: dict) -> float:
    """Largest |fraction - target| over the levels (0 for an empty list)."""
    if not examples:
        return 0.0
    h, total = histogram(examples), sum(float(v) for v in target_mix.values())
    return max(abs(h.get(k, 0) / len(examples) - float(v) / total) for k, v in target_mix.items())


def skeleton_stats(selected: list, pool: list | None = None) -> dict:
    """distinct_skeletons, distinct_skeleton_ratio (distinct / examples) and, given the verified pool, coverage
    (distinct skeletons selected / distinct skeletons available)."""
    distinct = {e.skeleton for e in selected}
    out = {
        "distinct_skeletons": len(distinct),
        "distinct_skeleton_ratio": round(len(distinct) / max(len(selected), 1), 4),
        "distinct_queries": len({query_key(e) for e in selected}),
    }
    if pool is not None:
        available = {e.skeleton for e in pool}
        out["pool_distinct_skeletons"] = len(available)
        out["skeleton_coverage"] = round(len(distinct & available) / max(len(available), 1), 4)
    return out


def split_heldout(examples: list, fraction: float, by: str = "skeleton", seed: int = 0) -> tuple[list, list]:
    """(train, test): groups (by skeleton | db | query) go to test, per difficulty bucket, until `fraction`; by
    "literal", single examples whose literal-masked query keeps other examples in train."""
    if not 0 <= fraction < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {fraction}")
    if by == "literal":
        return _split_literal(examples, fraction, seed)
    group_of = {"skeleton": lambda e: e.skeleton, "db": lambda e: e.db_id, "query": query_key}.get(by)
    if group_of is None:
        raise ValueError(f"heldout_by must be skeleton, db, query or literal, got {by!r}")
    rng = random.Random(seed)
    test_groups = set()
    buckets = [examples] if by == "db" else [[e for e in examples if e.difficulty == lv] for lv in LEVELS]
    for bucket in buckets:
        sizes = collections.Counter(group_of(e) for e in bucket)
        groups = sorted(sizes, key=str)
        rng.shuffle(groups)
        want, got = fraction * len(bucket), 0
        for g in groups:
            if got >= want or (got + sizes[g] > want * 1.5 and got > 0):
                continue  # an oversized group would overshoot; a smaller one may still fit
            test_groups.add(g)
            got += sizes[g]
    test = [e for e in examples if group_of(e) in test_groups]
    train = [e for e in examples if group_of(e) not in test_groups]
    return train, test


def _split_literal(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """One example per literal-masked query with >= 2 examples goes to test, per difficulty bucket, until `fraction`
    (fewer when too few queries repeat: raise factory.max_per_query). Queries without literals never repeat (exact
    duplicates are dropped), so they all stay in train."""
    rng = random.Random(seed)
    held = set()
    for lv in LEVELS:
        groups = collections.defaultdict(list)
        for i, e in enumerate(examples):
            if e.difficulty == lv:
                groups[query_key(e)].append(i)
        want = round(fraction * sum(len(g) for g in groups.values()))
        keys = sorted(k for k, g in groups.items() if len(g) >= 2)
        rng.shuffle(keys)
        held.update(rng.choice(groups[k]) for k in keys[:want])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]
