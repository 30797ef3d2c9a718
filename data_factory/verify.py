"""Verification: execution checks, then semantic-logic alignment by generation-as-check (K cycles).

For each candidate (SQL + question, on its DB):
1. static: parses (sqlglot); no nondeterministic functions (RANDOM(), now-dependent dates); no LIMIT without ORDER BY.
2. execution (agro_jax.sql.executor, run twice): runs; both runs equal (order-sensitive when the query orders);
   non-empty and not all-NULL unless allowed; at most `max_rows` rows.
3. ties at a LIMIT: the query re-run with all output columns appended to its ORDER BY ascending vs descending must
   return the same rows, else the "top k" is not determined by the question ("ambiguous_limit").
4. generation-as-check: a checker (RuleChecker by default, or a model) writes SQL from the question alone; it must
   match the gold by execution (`compare`, "bird" mode). On a mismatch the question is regenerated (next phrasing)
   and checked again, up to `max_check_cycles` cycles; then the candidate is dropped.

    v = Verifier(executor, RuleChecker(), RuleQuestionGenerator(), contexts, max_check_cycles=3)
    accepted, reasons = v.verify(candidates)     # reasons: Counter of rejection reasons
"""

from __future__ import annotations

import collections

import sqlglot
from sqlglot import exp

from agro_jax.sql.compare import compare
from agro_jax.sql.executor import Query

REASONS = (
    "parse_error",
    "nondeterministic",
    "nondeterministic_limit",
    "exec_error",
    "empty_result",
    "null_result",
    "too_many_rows",
    "ambiguous_limit",
    "check_unparseable",
    "check_mismatch",
)
_NOW = ("'now'", "current_timestamp", "current_date", "current_time")


def static_reason(sql: str) -> str | None:
    """Rejection reason visible without running the query, or None."""
    try:
        tree = sqlglot.parse_one(sql, read="sqlite")
    except sqlglot.errors.ParseError:
        return "parse_error"
    if tree is None or not isinstance(tree, exp.Query):
        return "parse_error"
    if any(True for _ in tree.find_all(exp.Rand)) or any(k in sql.lower() for k in _NOW):
        return "nondeterministic"
    for sel in tree.find_all(exp.Select):
        if sel.args.get("limit") and not sel.args.get("order"):
            aggregate_only = sel.find(exp.AggFunc) is not None and not sel.args.get("group")
            if not aggregate_only:  # one row anyway when aggregating without GROUP BY
                return "nondeterministic_limit"
    if isinstance(tree, exp.SetOperation) and tree.args.get("limit") and not tree.args.get("order"):
        return "nondeterministic_limit"
    return None


def _ordered(sql: str) -> bool:
    try:
        return sqlglot.parse_one(sql, read="sqlite").args.get("order") is not None
    except sqlglot.errors.ParseError:
        return False


def _same_rows(a, b, ordered: bool) -> bool:
    if ordered:
        return a.rows == b.rows
    key = lambda r: tuple((v is None, str(type(v)), v if v is not None else 0) for v in r)
    return sorted(a.rows, key=key) == sorted(b.rows, key=key)


def tie_variants(sql: str, num_columns: int) -> tuple[str, str] | None:
    """(asc, desc) versions of a top-level ORDER BY ... LIMIT query with every output column as a tiebreaker."""
    tree = sqlglot.parse_one(sql, read="sqlite")
    if not isinstance(tree, exp.Select) or not tree.args.get("limit") or not tree.args.get("order"):
        return None
    out = []
    for desc in (False, True):
        t = tree.copy()
        order = t.args["order"]
        for i in range(1, num_columns + 1):
            order.append("expressions", exp.Ordered(this=exp.Literal.number(i), desc=desc))
        out.append(t.sql("sqlite"))
    return out[0], out[1]


class Verifier:
    def __init__(
        self,
        executor,
        checker,
        question_generator,
        contexts: dict,
        max_check_cycles: int = 3,
        max_rows: int = 200,
        allow_empty: bool = False,
        compare_mode: str = "bird",
    ):
        self.executor, self.checker, self.qgen, self.contexts = executor, checker, question_generator, contexts
        self.max_check_cycles, self.max_rows = max(1, int(max_check_cycles)), int(max_rows)
        self.allow_empty, self.compare_mode = allow_empty, compare_mode

    def _run(self, pairs):  # [(db_path, sql)] -> [Result]
        return self.executor.run_many([Query(p, s, max_rows=self.max_rows) for p, s in pairs]) if pairs else []

    def execution_reasons(self, cands) -> tuple[list[str | None], list]:
        """Per candidate: (reason or None, gold Result) after steps 1-3."""
        reasons = [static_reason(c.sql) for c in cands]
        todo = [i for i, r in enumerate(reasons) if r is None]
        results = self._run([(cands[i].db_path, cands[i].sql) for i in todo for _ in range(2)])
        gold = [None] * len(cands)
        ties = []
        for k, i in enumerate(todo):
            r1, r2 = results[2 * k], results[2 * k + 1]
            gold[i] = r1
            if not r1.ok or not r2.ok:
                reasons[i] = "exec_error"
            elif not _same_rows(r1, r2, _ordered(cands[i].sql)):
                reasons[i] = "nondeterministic"
            elif r1.truncated or len(r1.rows) > self.max_rows:
                reasons[i] = "too_many_rows"
            elif not r1.rows and not self.allow_empty:
                reasons[i] = "empty_result"
            elif r1.rows and all(v is None for row in r1.rows for v in row) and not self.allow_empty:
                reasons[i] = "null_result"
            else:
                variants = tie_variants(cands[i].sql, len(r1.columns))
                if variants:
                    ties.append((i, variants))
        tie_results = self._run([(cands[i].db_path, s) for i, vs in ties for s in vs])
        for k, (i, _) in enumerate(ties):
            a, b = tie_results[2 * k], tie_results[2 * k + 1]
            if not (a.ok and b.ok and set(a.rows) == set(b.rows)):
                reasons[i] = "ambiguous_limit"
        return reasons, gold

    def verify(self, cands: list) -> tuple[list, collections.Counter]:
        """Returns (accepted candidates with question/cycles set, Counter of rejection reasons)."""
        counts: collections.Counter = collections.Counter()
        reasons, gold = self.execution_reasons(cands)
        pending = []
        for i, r in enumerate(reasons):
            if r is None:
                pending.append(i)
            else:
                counts[r] += 1
        missing = [i for i in pending if not cands[i].question]
        if missing:
            qs = self.qgen.generate([cands[i] for i in missing], self.contexts, 0)
            for i, q in zip(missing, qs):
                cands[i].question = q
        accepted = []
        last_reason: dict[int, str] = {}
        for cycle in range(self.max_check_cycles):
            if not pending:
                break
            ctxs = [self.contexts[cands[i].db_id] for i in pending]
            preds = self.checker.to_sql([cands[i].question for i in pending], ctxs)
            run = [(k, i) for k, i in enumerate(pending) if preds[k] is not None and preds[k] != cands[i].sql]
            results = dict(zip((k for k, _ in run), self._run([(cands[i].db_path, preds[k]) for k, i in run])))
            failed = []
            for k, i in enumerate(pending):
                c = cands[i]
                c.cycles = cycle + 1
                if preds[k] is None:
                    last_reason[i] = "check_unparseable"
                elif preds[k] == c.sql or compare(results[k], gold[i], self.compare_mode, c.sql):
                    accepted.append(c)
                    continue
                else:
                    last_reason[i] = "check_mismatch"
                failed.append(i)
            # Regenerate questions (next phrasing) for candidates that carry a spec; others cannot change.
            regen = [i for i in failed if cands[i].template] if cycle + 1 < self.max_check_cycles else []
            for i in set(failed) - set(regen):
                counts[last_reason[i]] += 1
            if regen:
                qs = self.qgen.generate([cands[i] for i in regen], self.contexts, cycle + 1)
                for i, q in zip(regen, qs):
                    cands[i].question = q
            pending = regen
        return accepted, counts
