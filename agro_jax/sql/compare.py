"""Execution-result equivalence: is the predicted query's result "the same" as the gold query's?

Modes (`compare(pred, gold, mode, gold_sql)`; an errored pred or gold is never a match):

- "bird": the BIRD evaluator (DAMO-ConvAI bird/llm/src/evaluation.py `execute_sql`):
  `set(predicted_res) == set(ground_truth_res)`. Row order, duplicate rows and gold ORDER BY are ignored; column
  order matters (rows are tuples).
- "spider": the Spider / test-suite evaluator (taoyds/test-suite-sql-eval exec_eval.py `result_eq`), re-implemented
  line for line: two empty results match (whatever their columns); otherwise row counts and column counts must be
  equal; the results must be equal as multisets of rows (as lists when `'order by' in gold_sql.lower()`, the
  official substring test) under SOME permutation of the predicted columns (candidate permutations are pruned by
  per-column value sets, sampling 20 rows when there are > 3 columns; we seed that sampling for determinism).
  DISTINCT: the official script (keep_distinct=False, the default) deletes every `distinct` token from BOTH queries
  before executing them (so `COUNT(DISTINCT x)` becomes `COUNT(x)` too). That happens before execution, so it is
  not compare()'s job: callers run `spider_exec_sql(sql)` on both queries in spider/tolerant modes
  (rewards.py and evaluate.py do). We strip DISTINCT keyword tokens found by sqlglot's tokenizer (never inside
  string literals or quoted identifiers), which equals the official sqlparse-token filter on real queries.
  Not reproduced: plug_value (gold literal plugging) and the test-suite's extra databases — we use one DB per query.
- "tolerant": "spider" after normalising every value: floats are rounded to 6 significant digits
  (`float(f"{v:.6g}")`, i.e. ~1e-6 relative tolerance: 0.30000000000000004 == 0.3, 33.333333 == 100/3) and integral
  floats become ints (3.0 == 3). Use it where float formatting differences (AVG over reordered rows, ROUND variants)
  should not count as wrong.

Truncated results (more than max_rows) compare on the rows that were returned; evaluation uses a generous max_rows.
"""

from __future__ import annotations

import random
from collections import Counter
from itertools import product

import sqlglot
from sqlglot.tokens import TokenType

MODES = ("bird", "spider", "tolerant")


def compare(pred, gold, mode: str = "bird", gold_sql: str = "") -> bool:
    """pred/gold: executor Results. gold_sql decides order sensitivity in spider/tolerant modes."""
    if mode not in MODES:
        raise ValueError(f"compare mode must be one of {MODES}, got {mode!r}")
    if not pred.ok or not gold.ok:
        return False
    if mode == "bird":
        return set(pred.rows) == set(gold.rows)
    gold_rows, pred_rows = list(gold.rows), list(pred.rows)
    if mode == "tolerant":
        gold_rows, pred_rows = _normalise(gold_rows), _normalise(pred_rows)
    return result_eq(gold_rows, pred_rows, order_matters="order by" in gold_sql.lower())


def spider_exec_sql(sql: str, keep_distinct: bool = False) -> str:
    """The SQL the Spider evaluator executes: DISTINCT keywords removed unless keep_distinct."""
    if keep_distinct or "distinct" not in sql.lower():
        return sql
    try:
        tokens = sqlglot.tokenize(sql, read="sqlite")
    except Exception:  # noqa: BLE001 -- untokenizable SQL runs as is and fails in the executor
        return sql
    out, pos = [], 0
    for tok in tokens:
        if tok.token_type == TokenType.DISTINCT:
            out.append(sql[pos : tok.start])
            pos = tok.end + 1
    out.append(sql[pos:])
    return "".join(out)


def _normalise(rows):
    def norm(v):
        if isinstance(v, float):
            if v != v or v in (float("inf"), float("-inf")):
                return v
            r = float(f"{v:.6g}")
            return int(r) if r.is_integer() and abs(r) < 2**53 else r
        return v

    return [tuple(norm(v) for v in row) for row in rows]


# ---- test-suite-sql-eval exec_eval.py semantics -------------------------------------------------------------------


def _unorder_row(row):
    return tuple(sorted(row, key=lambda x: str(x) + str(type(x))))


def _quick_rej(result1, result2, order_matters):
    s1 = [_unorder_row(row) for row in result1]
    s2 = [_unorder_row(row) for row in result2]
    return s1 == s2 if order_matters else set(s1) == set(s2)


def _multiset_eq(l1, l2):
    return len(l1) == len(l2) and Counter(l1) == Counter(l2)


def _constraint_permutations(tab1_sets_by_columns, result2, rng):
    num_cols = len(result2[0])
    perm_constraints = [set(range(num_cols)) for _ in range(num_cols)]
    if num_cols <= 3:
        return product(*perm_constraints)
    for _ in range(20):  # prune with sampled rows of the prediction, as the official script does
        row = rng.choice(result2)
        for tab1_col in range(num_cols):
            for tab2_col in set(perm_constraints[tab1_col]):
                if row[tab2_col] not in tab1_sets_by_columns[tab1_col]:
                    perm_constraints[tab1_col].remove(tab2_col)
    return product(*perm_constraints)


def result_eq(result1: list[tuple], result2: list[tuple], order_matters: bool) -> bool:
    """Official Spider result equivalence; result1 = gold rows, result2 = predicted rows."""
    if len(result1) == 0 and len(result2) == 0:
        return True
    if len(result1) != len(result2):
        return False
    num_cols = len(result1[0])
    if len(result2[0]) != num_cols:
        return False
    if not _quick_rej(result1, result2, order_matters):
        return False
    tab1_sets_by_columns = [{row[i] for row in result1} for i in range(num_cols)]
    rng = random.Random(0)
    for perm in _constraint_permutations(tab1_sets_by_columns, result2, rng):
        if len(perm) != len(set(perm)):
            continue
        result2_perm = result2 if num_cols == 1 else [tuple(row[i] for i in perm) for row in result2]
        if order_matters:
            if result1 == result2_perm:
                return True
        elif set(result1) == set(result2_perm) and _multiset_eq(result1, result2_perm):
            return True
    return False
