"""Verification: execution checks, then semantic-logic alignment by generation-as-check (K cycles).

For each candidate (SQL + question, on its DB):
1. static: parses (sqlglot); no nondeterministic functions (RANDOM(), now-dependent dates); no LIMIT without ORDER BY.
2. execution (agro_jax.sql.executor, run twice): runs; both runs equal (order-sensitive when the query orders);
   non-empty and not all-NULL unless allowed; at most `max_rows` rows.
3. ties at a LIMIT: the query re-run with all output columns appended to its ORDER BY ascending vs descending must
   return the same rows, else the "top k" is not determined by the question ("ambiguous_limit").
4. generation-as-check: a checker (RuleChecker by default, or a model) writes SQL from the question alone; it must
   match the gold by execution (`compare`, "bird" mode). An optional judge first screens the question (SQL leaked
   verbatim, a column the schema lacks). On a failure the question is regenerated (the rule realizer: next phrasing;
   a model: from the SQL plus feedback saying what went wrong, with the executor's observation of the checker's SQL
   and of the gold SQL) and checked again, up to `max_check_cycles` cycles; then the candidate is dropped with the
   last cycle's reason.

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
    "question_empty",
    "judge_sql_leak",
    "judge_unknown_column",
    "check_unparseable",
    "check_error",
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


def _feedback(reason: str, detail: str = "", pred: str | None = None, obs: str = "", gold_obs: str = "") -> str:
    """What the question writer is told about the failed question (the executor's observations of both queries)."""
    reader = "from it a reader who saw only the schema"
    if reason == "question_empty":
        return "it was empty."
    if reason == "judge_sql_leak":
        return f"it was rejected because it copied SQL text ({detail}); say everything in plain words."
    if reason == "judge_unknown_column":
        return f"it was rejected because it named {detail}, which is not a column of the schema."
    if reason == "check_unparseable":
        return f"{reader} could not write any SQL."
    if reason == "check_error":
        return f"{reader} wrote\n{pred}\nwhich failed: {obs}"
    return f"{reader} wrote\n{pred}\nwhich returned:\n{obs}\nbut the SQL query above returns:\n{gold_obs}"


class Verifier:
    """Steps 1-4 over a batch. `judge` (optional, e.g. judge.RuleJudge) screens each question before the check; a
    flagged question fails its cycle. On a failed cycle the question generator gets `feedback` (see _feedback) and
    writes the next question. After `verify`, `self.audit[i]` records candidate i's attempts (question, who wrote
    it, judge flag, the checker's SQL, outcome), its final status and reason, and which checker verified it."""

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
        judge=None,
    ):
        self.executor, self.checker, self.qgen, self.contexts = executor, checker, question_generator, contexts
        self.max_check_cycles, self.max_rows = max(1, int(max_check_cycles)), int(max_rows)
        self.allow_empty, self.compare_mode, self.judge = allow_empty, compare_mode, judge
        self.audit: list[dict] = []

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

    def _write(self, idx: list[int], cands: list, attempt: int, feedback: list | None, audit: list[dict]):
        if not idx:
            return
        qs = self.qgen.generate([cands[i] for i in idx], self.contexts, attempt, feedback=feedback)
        by = list(getattr(self.qgen, "last_by", None) or []) or [getattr(self.qgen, "name", "custom")] * len(idx)
        for i, q, b in zip(idx, qs, by, strict=True):
            cands[i].question = q
            audit[i]["attempts"].append(dict(cycle=attempt + 1, question=q, by=b, style=cands[i].style))

    def verify(self, cands: list) -> tuple[list, collections.Counter]:
        """Returns (accepted candidates with question/cycles set, Counter of rejection reasons)."""
        from agro_jax.rollout.agent import format_observation

        counts: collections.Counter = collections.Counter()
        reasons, gold = self.execution_reasons(cands)
        audit = [dict(db_id=c.db_id, sql=c.sql, template=c.template, difficulty=c.difficulty, status="rejected",
                      reason=r, verified_by=None, attempts=[]) for c, r in zip(cands, reasons)]  # fmt: skip
        self.audit = audit
        pending = [i for i, r in enumerate(reasons) if r is None]
        counts.update(r for r in reasons if r is not None)
        for i in pending:
            if cands[i].question:
                audit[i]["attempts"].append(dict(cycle=1, question=cands[i].question, by="given", style=cands[i].style))
        self._write([i for i in pending if not cands[i].question], cands, 0, None, audit)
        accepted = []
        checker_name = getattr(self.checker, "name", type(self.checker).__name__)
        for cycle in range(self.max_check_cycles):
            if not pending:
                break
            fail: dict[int, tuple[str, str]] = {}  # i -> (reason, feedback)
            for i in pending:
                cands[i].cycles = cycle + 1
                if not cands[i].question.strip():
                    fail[i] = ("question_empty", _feedback("question_empty"))
            qs = lambda idx: [cands[i].question for i in idx]  # noqa: E731
            ctxs = lambda idx: [self.contexts[cands[i].db_id] for i in idx]  # noqa: E731
            todo = [i for i in pending if i not in fail]
            if self.judge is not None and todo:
                flags = self.judge.judge(qs(todo), ctxs(todo))
                for i, flag in zip(todo, flags, strict=True):
                    audit[i]["attempts"][-1]["judge"] = flag[0] if flag else None
                    if flag:
                        fail[i] = (flag[0], _feedback(*flag))
            todo = [i for i in pending if i not in fail]
            preds = self.checker.to_sql(qs(todo), ctxs(todo)) if todo else []
            run = [(i, p) for i, p in zip(todo, preds) if p is not None and p != cands[i].sql]
            results = dict(zip((i for i, _ in run), self._run([(cands[i].db_path, p) for i, p in run])))
            for i, pred in zip(todo, preds, strict=True):
                c, attempt = cands[i], audit[i]["attempts"][-1]
                attempt["check_sql"] = pred
                if pred is None:
                    fail[i] = ("check_unparseable", _feedback("check_unparseable"))
                elif pred == c.sql or compare(results[i], gold[i], self.compare_mode, c.sql):
                    attempt["outcome"] = "match"
                    audit[i].update(status="accepted", reason=None, verified_by=checker_name)
                    accepted.append(c)
                elif not results[i].ok:
                    fail[i] = ("check_error", _feedback("check_error", pred=pred, obs=format_observation(results[i])))
                else:
                    obs, gold_obs = format_observation(results[i]), format_observation(gold[i])
                    fail[i] = ("check_mismatch", _feedback("check_mismatch", pred=pred, obs=obs, gold_obs=gold_obs))
            for i, (reason, _) in fail.items():
                audit[i]["attempts"][-1]["outcome"] = audit[i]["reason"] = reason
            # Regenerate the failed questions; the rule realizer needs a spec, a model writes from the SQL alone.
            can = lambda i: bool(cands[i].template) or bool(getattr(self.qgen, "from_sql", False))  # noqa: E731
            failed = [i for i in pending if i in fail]
            regen = [i for i in failed if can(i)] if cycle + 1 < self.max_check_cycles else []
            counts.update(fail[i][0] for i in failed if i not in set(regen))
            self._write(regen, cands, cycle + 1, [fail[i][1] for i in regen], audit)
            pending = regen
        return accepted, counts
