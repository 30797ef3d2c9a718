"""Question synthesis from the SQL spec: a rule-based realizer (default) and a model-backed generator.

Phrasings are patterns over the template's slots: `{t1}` plural table, `{t1|1}` singular, `{t1|a}` with article,
`{c2}` column, `{c2|a}` column with article, `{fk}` the foreign key's name ("department" for dept_id), `{op}`,
`{v}` literal ("Boston" quoted, numbers bare), `{agg}`, `{dir}`, `{cmp}`, `{n}`. Each template has several
phrasings ("styles"); regeneration after a failed check moves to the next style. The checker (checker.py) reads the
same patterns backwards.

    gen = RuleQuestionGenerator(seed=0)
    questions = gen.generate(candidates, contexts, attempt=0)   # contexts: {db_id: DbContext}

`ModelQuestionGenerator(generate_fn)` asks a model (any `generate_fn(prompts) -> texts`, e.g.
data_factory.model_loop.Policy over the project's sampler) to write the question from the SQL and schema, in one of
several STYLES, and to write a new one from the feedback of a failed check; empty answers fall back to the realizer.
"""

from __future__ import annotations

import random
import re
import zlib
from typing import Protocol

from data_factory.lexicon import Lexicon

PLACEHOLDER = re.compile(r"\{(\w+)(?:\|(\w))?\}")

PHRASINGS: dict[str, list[str]] = {
    "filter_select": [
        "List the {c1} of {t1} whose {c2} {op} {v}.",
        "What is the {c1} of each {t1|1} whose {c2} {op} {v}?",
        "Show the {c1} for {t1} where the {c2} {op} {v}.",
    ],
    "filter_count": [
        "How many {t1} have {c2|a} that {op} {v}?",
        "Count the {t1} whose {c2} {op} {v}.",
        "What is the number of {t1} whose {c2} {op} {v}?",
    ],
    "agg_all": ["What is the {agg} {c1} of all {t1}?", "Find the {agg} {c1} across {t1}."],
    "agg_filter": [
        "What is the {agg} {c1} of {t1} whose {c2} {op} {v}?",
        "Among {t1} whose {c2} {op} {v}, what is the {agg} {c1}?",
    ],
    "distinct_values": [
        "What are the distinct {c1} values of {t1}?",
        "List every different {c1} that appears among {t1}.",
    ],
    "top_1": ["Which {t1|1} has the {dir} {c2}? Give its {c1}.", "What is the {c1} of the {t1|1} with the {dir} {c2}?"],
    "top_k": [
        "List the {c1} of the {n} {t1} with the {dir} {c2}.",
        "Which {n} {t1} have the {dir} {c2}? Show their {c1}.",
    ],
    "count_distinct": ["How many different {c1} values do {t1} have?", "Count the distinct {c1} of {t1}."],
    "group_count": ["For each {c1}, how many {t1} are there?", "Count the {t1} per {c1}."],
    "group_agg": ["What is the {agg} {c2} of {t1} for each {c1}?", "For every {c1}, give the {agg} {c2} of {t1}."],
    "group_top": ["Which {c1} has the most {t1}?", "What is the most common {c1} among {t1}?"],
    "join_filter": [
        "List the {c1} of {t1} whose {fk} {c2} {op} {v}.",
        "What is the {c1} of each {t1|1} whose {fk} has {c2|a} that {op} {v}?",
        "Show the {c1} of {t1} with {t2|a} whose {c2} {op} {v}.",
    ],
    "join_count": ["How many {t1} have {fk|a} whose {c2} {op} {v}?", "Count the {t1} whose {fk} {c2} {op} {v}."],
    "join_group_count": ["For each {fk} {c2}, how many {t1} are there?", "Count the {t1} per {fk} {c2}."],
    "join_group_agg": [
        "What is the {agg} {c1} of {t1} for each {fk} {c2}?",
        "For every {fk} {c2}, give the {agg} {c1} of {t1}.",
    ],
    "chain_count": [
        "How many {t1} have {fk|a} whose {fk2} {c3} {op3} {v3}?",
        "Count the {t1} whose {fk}'s {fk2} {c3} {op3} {v3}.",
    ],
    "bridge_filter": [
        "List the distinct {c1} of {t1} that have {b|a} with {fk2|a} whose {c3} {op3} {v3}.",
        "Which {t1} have {b|a} whose {fk2} {c3} {op3} {v3}? List their distinct {c1}.",
    ],
    "group_having": ["Which {c1} values have more than {n} {t1}?", "List the {c1} shared by more than {n} {t1}."],
    "above_avg": [
        "List the {c1} of {t1} whose {c2} is {cmp} the average {c2}.",
        "Which {t1} have {c2|a} {cmp} the average? Give their {c1}.",
    ],
    "not_in": [
        "List the {c2} of {t2} that are not the {fk} of any {t1|1}.",
        "Which {t2} have no {t1}? Give their {c2}.",
    ],
    "in_subquery": [
        "List the {c1} of {t1} whose {fk} is among the {t2} with {c2|a} that {op} {v}.",
        "What is the {c1} of each {t1|1} whose {fk} is one of the {t2} whose {c2} {op} {v}?",
    ],
    "case_count": [
        "For every {c1}, count the {t1} whose {c2} {op} {v}, listing zero counts too.",
        "How many {t1} with {c2|a} that {op} {v} are there in each {c1}, including zeros?",
    ],
    "set_union": [
        "List the {c1} of {t1} whose {c2} {op} {v} or whose {c3} {op3} {v3}.",
        "Which {c1} values belong to {t1} with {c2|a} that {op} {v} or {c3|a} that {op3} {v3}?",
    ],
    "set_intersect": [
        "Which {c1} values appear both among {t1} whose {c2} {op} {v} and among {t1} whose {c3} {op3} {v3}?",
        "List the {c1} that belong to some {t1|1} whose {c2} {op} {v} and also to some {t1|1} whose {c3} {op3} {v3}.",
    ],
    "set_except": [
        "Which {c1} values appear among {t1} whose {c2} {op} {v} but never among {t1} whose {c3} {op3} {v3}?",
        "List the {c1} of {t1} whose {c2} {op} {v}, excluding any {c1} of {t1} whose {c3} {op3} {v3}.",
    ],
    "join_having_order": [
        "Among {fk} {c2} values with at least {n} {t1}, which {k} have the {dir} {agg} {c1}? Show it too.",
        "List the {k} {fk} {c2} values with the {dir} {agg} {c1} of their {t1}, among those with at least {n} {t1}.",
    ],
    "window_top": [
        "For each {g}, which {t1|1} has the {dir} {c2}? Give the {g}, its {c1} and {c2}.",
        "Show, per {g} of {t1}, the {c1} and {c2} of the {t1|1} with the {dir} {c2}.",
    ],
    "window_topn": [
        "List the {c1} and {c2} of {t1} whose {c2} is among the top {n} distinct {c2} values.",
        "Which {t1} have one of the {n} highest {c2} values? Give their {c1} and {c2}.",
    ],
    "group_avg_above": [
        "Which {c1} values have an average {c2} above the overall average {c2} of {t1}?",
        "List each {c1} whose {t1} have a higher average {c2} than all {t1} together.",
    ],
    "cte_above_avg": [
        "Which {fk} {c2} values have more {t1} than the average {fk} {c2} value does?",
        "List the {fk} {c2} values whose number of {t1} is above the average.",
    ],
}


def literal_text(v) -> str:
    return f'"{v}"' if isinstance(v, str) else str(v)


def realize(template, slots: dict, lex: Lexicon, style: int, rng: random.Random) -> str:
    """The question for a filled spec in phrasing `style` (mod the number of phrasings)."""
    patterns = PHRASINGS[template.name]
    pattern = patterns[style % len(patterns)]
    by_name = {s.name: s for s in template.slots}
    variants = {}  # one word choice per slot, so repeated mentions agree

    def sub(m):
        name, form = m.group(1), m.group(2) or ""
        s, v = by_name[name], slots[name]
        if s.kind == "table":
            return lex.table(v, form)
        if s.kind == "col":
            return lex.column(slots[s.owner], v, form)
        if s.kind == "fk":
            w = lex.fk(slots[s.owner], v)
            return {"": w, "a": ("an " if w[:1] in "aeiou" else "a ") + w}[form]
        if s.kind == "val":
            return literal_text(v)
        if s.kind in ("op", "agg", "dir", "cmp"):
            col_kind = "num"
            if s.kind == "op":
                col = by_name[s.ref]
                col_kind = lex.kinds[(slots[col.owner], slots[col.name])]
            variants.setdefault(name, rng.randrange(8))
            return lex.word(s.kind, v, variants[name], col_kind)
        return str(v)

    q = PLACEHOLDER.sub(sub, pattern)
    return q[:1].upper() + q[1:]


class QuestionGenerator(Protocol):
    """`generate` sets each candidate's style; `feedback[i]` (or None) says what went wrong with candidates[i]'s
    current question in the last check cycle. `from_sql`: can write a question for a candidate without a spec."""

    name: str
    from_sql: bool

    def generate(self, candidates: list, contexts: dict, attempt: int, feedback: list | None = None) -> list[str]: ...


class RuleQuestionGenerator:
    """Deterministic: the style is a hash of the SQL plus the attempt number, word choices are seeded likewise.
    Feedback is ignored: regeneration moves to the next phrasing."""

    name = "rules"
    from_sql = False

    def __init__(self, seed: int = 0):
        self.seed = seed

    def generate(self, candidates: list, contexts: dict, attempt: int = 0, feedback: list | None = None) -> list[str]:
        from data_factory.templates import BY_NAME

        out = []
        for c in candidates:
            h = zlib.crc32(f"{self.seed}:{c.sql}".encode())
            c.style = h + attempt
            rng = random.Random(h * 31 + attempt)
            out.append(realize(BY_NAME[c.template], c.slots, contexts[c.db_id].lex, c.style, rng))
        return out


QUESTION_PROMPT = """Database tables:
{schema}
SQL: {sql}
{feedback}Write one {new}question in plain English that this SQL query answers exactly. Say every condition, grouping,
ordering and limit of the query in words; no SQL and no table.column names. {style}
Answer with the question only."""
# After a failed check cycle the prompt says what went wrong (verify._feedback: the reader's SQL with the executor's
# observation of it and of the gold SQL, or the judge's complaint) BEFORE the instruction and does not quote the
# failed question: with it quoted, Qwen2.5-Coder-0.5B copied it verbatim in 4 of 10 regenerations (0 in 10 without;
# neither version rescued any of those 10, measured in benchmarks/RESULTS.md).
# Several registers, so model-written questions do not all share one shape; attempt k of a candidate uses style
# (hash(sql) + k) mod len(STYLES), so a regenerated question also changes register.
STYLES = (
    ("plain", "Ask it as a plain, direct question."),
    ("request", "Phrase it as a request that starts with a verb such as Show, List, Find or Give."),
    ("casual", "Phrase it casually and briefly, as a busy analyst would type it."),
    ("precise", "Phrase it formally and precisely."),
)
_LEAD = re.compile(r"^(?:\*\*)?(?:question|q|new question|rewritten question)\s*[:\-]\s*(?:\*\*)?\s*", re.I)


def sql_tables(schema, sql: str):
    """The schema restricted to the tables `sql` reads (the whole schema if it names none of them or fails to parse)."""
    import dataclasses

    import sqlglot
    from sqlglot import exp

    try:
        used = {t.name.lower() for t in sqlglot.parse_one(sql, read="sqlite").find_all(exp.Table)}
    except sqlglot.errors.ParseError:
        return schema
    tables = tuple(t for t in schema.tables if t.name.lower() in used)
    if not tables:
        return schema
    names = {t.name for t in tables}
    fks = tuple(f for f in schema.foreign_keys if f.table in names and f.ref_table in names)
    return dataclasses.replace(schema, tables=tables, foreign_keys=fks)


def first_question(text: str) -> str:
    """The question in a completion: its first non-empty line without a 'Question:' label, quotes or markdown."""
    for line in (text or "").splitlines():
        line = _LEAD.sub("", line.strip()).strip().strip("*").strip()
        if len(line) >= 2 and line[0] == line[-1] and line[0] in "\"'`":
            line = line[1:-1].strip()
        if line:
            return line
    return ""


class ModelQuestionGenerator:
    """Questions from a model: `generate_fn(prompts) -> completions`, one prompt per candidate (schema, SQL, a style
    from STYLES, and on regeneration what went wrong with the previous question). The first non-empty line of each
    completion is the question; empty ones fall back to `fallback` (the rule realizer by default, which needs a
    template spec; without one the question stays empty and the check rejects it). `last_by[i]` says who wrote the
    i-th question of the last call ("model" or "rules")."""

    name = "model"
    from_sql = True  # writes from the SQL alone, so imported examples without a spec can be regenerated too

    def __init__(self, generate_fn, fallback: QuestionGenerator | None = None, schema_compact: bool = True,
                 seed: int = 0, sample_values: int = 2):  # fmt: skip
        self.generate_fn, self.fallback = generate_fn, fallback or RuleQuestionGenerator(seed)
        self.schema_compact, self.seed, self.sample_values = schema_compact, seed, sample_values
        self.last_by: list[str] = []

    def prompt(self, c, contexts: dict, attempt: int, feedback: str | None = None) -> str:
        """Only the tables the SQL reads are shown: they are all the writer needs, and the prompt stays short (with
        Qwen's tokenizer the first prompt of an embedded-DB query fits the sampler's 256-token bucket)."""
        from agro_jax.sql.schema import render_schema

        c.style = zlib.crc32(f"{self.seed}:{c.sql}".encode()) + attempt
        style = STYLES[c.style % len(STYLES)][1]
        schema = render_schema(sql_tables(contexts[c.db_id].schema, c.sql), self.sample_values, self.schema_compact)
        fb = f"An earlier question for this SQL failed: {feedback.strip()}\n" if feedback else ""
        return QUESTION_PROMPT.format(schema=schema, sql=c.sql, style=style, feedback=fb, new="new " if fb else "")

    def generate(self, candidates: list, contexts: dict, attempt: int = 0, feedback: list | None = None) -> list[str]:
        feedback = feedback or [None] * len(candidates)
        prompts = [self.prompt(c, contexts, attempt, f) for c, f in zip(candidates, feedback, strict=True)]
        texts = list(self.generate_fn(prompts))
        if len(texts) != len(prompts):
            raise ValueError(f"generate_fn returned {len(texts)} completions for {len(prompts)} prompts")
        out = [first_question(t) for t in texts]
        self.last_by = ["model" if q else "none" for q in out]
        missing = [i for i, q in enumerate(out) if not q and candidates[i].template]
        if missing:
            fb = self.fallback.generate([candidates[i] for i in missing], contexts, attempt)
            for i, q in zip(missing, fb):
                out[i], self.last_by[i] = q, "rules"
        return out
