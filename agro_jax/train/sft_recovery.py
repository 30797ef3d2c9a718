"""Recovery trajectories for the cold start (config.sft.recovery_fraction).

A gold trajectory explores with its gold query and answers that same query, so a cold start built only from them
never shows an error observation or a changed query. From such a cold start the real 0.5B model answered its failing
exploration query in every sampled episode (benchmarks/RESULTS.md, issue 19): GRPO never sees a fix to reinforce.
A recovery trajectory puts a wrong first query before the gold one:

    think -> <sql>gold with one column swapped</sql> -> <observation>Error ...</observation>
          -> think (what failed, the column to use) -> <sql>gold</sql> -> <observation>rows</observation>
          -> <answer>gold</answer>

The wrong column is one the query's table lacks but another table has, as when a model takes a column from the wrong
table (most of the instruct model's Spider misses are such runtime errors, README). The real executor's error is the
observation; a swap the database accepts is not used.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=256)
def _tables(db_path: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """lower-cased table name -> (the name as the schema spells it, its column names)."""
    from agro_jax.sql.schema import introspect

    return {t.name.lower(): (t.name, tuple(c.name for c in t.columns)) for t in introspect(db_path, 0).tables}


def swap_a_column(sql: str, db_path: str, rng: np.random.Generator) -> tuple[str, str] | None:
    """(wrong_sql, fix_thought): `sql` with one column reference renamed to a column of another table that the
    referenced table(s) do not have, or None when the query has no such column (or does not parse)."""
    import sqlglot
    from sqlglot import exp

    try:
        tree = sqlglot.parse_one(sql, read="sqlite")
    except Exception:
        return None
    schema = _tables(db_path)
    tables = {t: cols for t, (_, cols) in schema.items()}
    aliases = {}
    for t in tree.find_all(exp.Table):
        aliases[(t.alias_or_name or t.name).lower()] = t.name.lower()
        aliases[t.name.lower()] = t.name.lower()
    in_query = sorted(set(aliases.values()) & set(tables))
    candidates = []
    for col in tree.find_all(exp.Column):
        owner = aliases.get(col.table.lower()) if col.table else None
        scope = [owner] if owner in tables else in_query
        here = {c.lower() for t in scope for c in tables[t]}
        if not scope or col.name.lower() not in here:
            continue
        others = sorted({c for t, cols in tables.items() if t not in scope for c in cols if c.lower() not in here})
        if others:  # the table the column really belongs to names it in the fix
            owner = next(t for t in scope if col.name.lower() in {c.lower() for c in tables[t]})
            candidates.append((col, owner, others))
    if not candidates:
        return None
    col, owner, others = candidates[int(rng.integers(len(candidates)))]
    wrong, right = others[int(rng.integers(len(others)))], col.name
    col.set("this", exp.to_identifier(wrong))
    name = schema[owner][0]  # as the schema text spells it
    fix = f"The query failed: {name} has no column {wrong}. The column I need is {name}.{right}."
    return tree.sql(dialect="sqlite"), fix


def add_recovery(trajs: list[dict], executor, rollout_cfg, fraction: float, seed: int) -> int:
    """Turns round(fraction * len(trajs)) of `trajs` (a seeded choice) into recovery trajectories in place (their
    `turns`); returns how many became one (a swap that executes without error is skipped)."""
    from agro_jax.rollout.agent import format_observation
    from agro_jax.sql.executor import Query

    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"config.sft.recovery_fraction={fraction} must be in [0, 1]")
    k = int(round(fraction * len(trajs)))
    if k == 0:
        return 0
    rng = np.random.default_rng([seed, 0x5EC])
    picked = rng.choice(len(trajs), size=k, replace=False)
    swaps = {int(i): swap_a_column(trajs[i]["sql"], trajs[i]["example"]["db_path"], rng) for i in picked}
    swaps = {i: s for i, s in swaps.items() if s is not None}
    results = executor.run_many([Query(trajs[i]["example"]["db_path"], s[0]) for i, s in swaps.items()])
    rows, chars = int(rollout_cfg.observation_max_rows), int(rollout_cfg.observation_max_chars)
    made = 0
    for (i, (wrong, fix)), res in zip(swaps.items(), results):
        if res.ok:  # the database accepted the swap: not an error to recover from
            continue
        t = trajs[i]
        t["turns"] = [(t["reasoning"], wrong, format_observation(res, rows, chars)), (fix, t["sql"], t["observation"])]
        made += 1
    return made
