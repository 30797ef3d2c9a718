"""Judges for generated questions: flag a question that leaks its SQL verbatim or names a column the schema lacks.

A flagged question fails its check cycle with the judge's complaint fed back to the question writer; still flagged
after K cycles, the candidate is dropped with the judge's reason.

- `RuleJudge` (the default for model-written questions): SQL leaks are visible in the text (upper-case SQL keywords,
  `COUNT(`-style calls, comparison operators between identifiers, `table.column` references, code fences, and talk
  about SQL itself: "Write a SQL query that...", "How does the SQL query group..."), and a column the schema lacks is
  visible when it is written as an identifier (snake_case or `table.column`).
  It cannot see a column named in plain words ("the student's email address"); that question's SQL fails at
  execution instead (the checker writes a query against a column that does not exist).
- `ModelJudge(generate_fn)` asks the policy for a one-word verdict. Qwen2.5-Coder-0.5B-Instruct says UNKNOWN_COLUMN
  for 70 of 72 labeled questions, clean ones included (benchmarks/RESULTS.md, "factory: model in the loop"), so rules
  stay the default.

    flags = RuleJudge().judge(questions, contexts)   # per question: None or (reason, detail)
"""

from __future__ import annotations

import re

REASONS = ("judge_sql_leak", "judge_unknown_column")

_KEYWORDS = re.compile(
    r"\b(SELECT|FROM|WHERE|GROUP BY|ORDER BY|HAVING|JOIN|LIMIT|UNION|INTERSECT|EXCEPT|CASE WHEN|IS NULL|NOT IN)\b"
)
_CALL = re.compile(r"\b(COUNT|SUM|AVG|MIN|MAX)\s*\(\s*[\w.*]", re.I)
_OPERATOR = re.compile(r"[A-Za-z_]\w*\s*(<>|!=|>=|<=|==|=)\s*['\"\w]")
_FENCE = re.compile(r"```|`[^`]+`")
# Talk about SQL: 60 of 358 questions Qwen2.5-Coder-0.5B wrote in the factory bench (benchmarks/RESULTS.md, "factory:
# model in the loop"); 7 of its 66 accepted ones, each read by hand: a request for a query or a preamble, no question.
_SQL_TALK = re.compile(r"\bSQL\b", re.I)
_DOTTED = re.compile(r"\b([A-Za-z_]\w*)\.([A-Za-z_]\w*)\b")
_SNAKE = re.compile(r"\b[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)+\b")
_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'")


def _names(schema) -> tuple[set[str], dict[str, set[str]]]:
    tables = {t.name.lower(): {c.name.lower() for c in t.columns} for t in schema.tables}
    return set(tables) | {c for cols in tables.values() for c in cols}, tables


class RuleJudge:
    name = "rules"

    def judge_one(self, question: str, ctx) -> tuple[str, str] | None:
        text = _QUOTED.sub(" ", question)  # literal values may hold anything
        names, tables = _names(ctx.schema)
        for m in _DOTTED.finditer(text):
            t, c = m.group(1).lower(), m.group(2).lower()
            if t in tables:
                if c in tables[t]:
                    return "judge_sql_leak", m.group(0)
                return "judge_unknown_column", m.group(0)
        for pattern in (_FENCE, _KEYWORDS, _CALL, _OPERATOR, _SQL_TALK):
            m = pattern.search(text)
            if m:
                return "judge_sql_leak", m.group(0).strip()
        for m in _SNAKE.finditer(text):
            if m.group(0).lower() not in names:
                return "judge_unknown_column", m.group(0)
        return None

    def judge(self, questions: list[str], contexts: list) -> list[tuple[str, str] | None]:
        return [self.judge_one(q, ctx) for q, ctx in zip(questions, contexts, strict=True)]


JUDGE_PROMPT = """Database schema:
{schema}
Question: {question}
Does the question contain SQL code (keywords such as SELECT or WHERE, table.column names, operators such as >=), or
does it ask about a column that is not in the schema? Answer with one word: LEAK, UNKNOWN_COLUMN or OK."""


def parse_verdict(text: str) -> str | None:
    """'LEAK' / 'UNKNOWN_COLUMN' / 'OK' from a completion (the first verdict word it says), else None."""
    m = re.search(r"\b(LEAK|UNKNOWN[_ ]COLUMN|OK)\b", (text or "").upper())
    return None if m is None else m.group(1).replace(" ", "_")


class ModelJudge:
    """A one-word verdict from a model (`generate_fn(prompts) -> completions`); an unreadable verdict passes."""

    name = "model"

    def __init__(self, generate_fn, schema_compact: bool = True):
        self.generate_fn, self.schema_compact = generate_fn, schema_compact

    def judge(self, questions: list[str], contexts: list) -> list[tuple[str, str] | None]:
        from agro_jax.sql.schema import render_schema

        prompts = [
            JUDGE_PROMPT.format(schema=render_schema(ctx.schema, compact=self.schema_compact), question=q)
            for q, ctx in zip(questions, contexts, strict=True)
        ]
        texts = list(self.generate_fn(prompts))
        if len(texts) != len(prompts):
            raise ValueError(f"generate_fn returned {len(texts)} completions for {len(prompts)} prompts")
        out = []
        for t in texts:
            v = parse_verdict(t)
            out.append(("judge_sql_leak", "model") if v == "LEAK" else
                       ("judge_unknown_column", "model") if v == "UNKNOWN_COLUMN" else None)  # fmt: skip
        return out
