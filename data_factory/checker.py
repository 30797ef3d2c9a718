"""Generation-as-check: regenerate SQL from the question alone, to be compared with the gold SQL by execution.

`RuleChecker` is a question -> SQL parser that inverts the realizer: every phrasing of every template becomes a regex
whose slot groups are alternations of this schema's phrases (tables, columns, foreign-key names, operator words,
quoted literals); the first phrasing that matches and decodes against the schema gives a spec, rendered by the same
`render_sql`. It never sees the gold spec, so a question that is ambiguous (e.g. omits which of two foreign keys to
follow), mismatched with its SQL, or badly realized yields different SQL (or none) and fails the execution check.

`ModelChecker(generate_fn)` does the same with a model (any `generate_fn(prompts) -> completions`): the prompt holds
the schema and the question only, never the gold SQL.

    sqls = RuleChecker().to_sql(questions, contexts)   # contexts[i]: the DbContext of questions[i]; None = no parse
"""

from __future__ import annotations

import re

from data_factory.synth_question import PHRASINGS, PLACEHOLDER
from data_factory.synth_sql import render_sql
from data_factory.templates import BY_NAME

_VALUE = r'"[^"]*"|-?\d+(?:\.\d+)?'


def _alt(options: list[str]) -> str:
    return "|".join(re.escape(o) for o in options)


def _group_regex(slot, form: str, lex) -> str:
    if slot.kind == "table":
        return _alt(lex.alternatives("table", form))
    if slot.kind == "col":
        return _alt(lex.alternatives("col", form))
    if slot.kind == "fk":
        opts = lex.alternatives("fk")
        return _alt([("an " if w[:1] in "aeiou" else "a ") + w for w in opts] if form == "a" else opts)
    if slot.kind == "val":
        return _VALUE
    if slot.kind == "int":
        return r"\d+"
    return _alt(lex.alternatives(slot.kind))


def _compile(template, pattern: str, lex):
    by_name = {s.name: s for s in template.slots}
    out, pos, seen, groups = [], 0, {}, []
    for m in PLACEHOLDER.finditer(pattern):
        out.append(re.escape(pattern[pos : m.start()]))
        name, form = m.group(1), m.group(2) or ""
        seen[name] = seen.get(name, 0) + 1
        gname = name if seen[name] == 1 else f"{name}__{seen[name]}"
        groups.append((gname, name, form))
        out.append(f"(?P<{gname}>{_group_regex(by_name[name], form, lex)})")
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("".join(out), re.I), groups


def _literal(text: str):
    if text.startswith('"'):
        return text[1:-1]
    return float(text) if "." in text else int(text)


class RuleChecker:
    name = "rules"

    def __init__(self):
        self._compiled: dict[str, list] = {}  # db_id -> [(template, regex, groups)]

    def _patterns(self, ctx):
        if ctx.db_id not in self._compiled:
            self._compiled[ctx.db_id] = [
                (BY_NAME[name], *_compile(BY_NAME[name], p, ctx.lex)) for name, ps in PHRASINGS.items() for p in ps
            ]
        return self._compiled[ctx.db_id]

    def parse(self, question: str, ctx) -> tuple[str, dict] | None:
        """(template name, slots) of the first phrasing that matches and decodes, or None."""
        q = " ".join(question.split())
        for template, regex, groups in self._patterns(ctx):
            m = regex.fullmatch(q)
            if m is None:
                continue
            slots = _decode(template, [(name, form, m.group(g)) for g, name, form in groups], ctx)
            if slots is not None:
                return template.name, slots
        return None

    def to_sql(self, questions: list[str], contexts: list) -> list[str | None]:
        out = []
        for q, ctx in zip(questions, contexts, strict=True):
            parsed = self.parse(q, ctx)
            out.append(None if parsed is None else render_sql(BY_NAME[parsed[0]], parsed[1], ctx))
        return out


def _decode(template, mentions, ctx) -> dict | None:
    lex, schema = ctx.lex, ctx.schema
    by_kind = {}
    for name, form, text in mentions:
        by_kind.setdefault(template_slot(template, name).kind, []).append((name, form, text))
    slots: dict = {}

    def put(name, value):
        if value is None or slots.setdefault(name, value) != value:
            raise _Fail
        return value

    try:
        for name, form, text in by_kind.get("table", []):
            put(name, lex.decode_table(text, form))
        for s in (s for s in template.slots if s.kind == "fk"):
            said = [(form, text) for name, form, text in by_kind.get("fk", []) if name == s.name]
            if said:
                form, text = said[0]
                fk = lex.decode_fk(text.split(" ", 1)[1] if form == "a" else text, slots.get(s.owner))
            else:  # not mentioned: the first FK between the two tables (lossy phrasings rely on this)
                fk = next((f for f in schema.foreign_keys if (f.table, f.ref_table) ==
                           (slots.get(s.owner), slots.get(s.ref))), None)  # fmt: skip
            if fk is None:
                raise _Fail
            put(s.owner, fk.table), put(s.ref, fk.ref_table), put(s.name, fk.column)
        for name, form, text in by_kind.get("col", []):
            put(name, lex.decode_column(slots[template_slot(template, name).owner], text, form))
        for kind in ("op", "agg", "dir", "cmp"):
            for name, _, text in by_kind.get(kind, []):
                put(name, lex.decode_word(kind, text))
        for name, _, text in by_kind.get("val", []):
            put(name, _literal(text))
        for name, _, text in by_kind.get("int", []):
            put(name, int(text))
    except (_Fail, KeyError):
        return None
    if any(s.name not in slots for s in template.slots):
        return None
    return slots


class _Fail(Exception):
    pass


def template_slot(template, name):
    return next(s for s in template.slots if s.name == name)


CHECK_PROMPT = """Database schema:
{schema}
Question: {question}
Write one SQLite query that answers the question, using only the tables and columns of the schema.
Answer with the query only, in a ```sql block."""
_FENCED = re.compile(r"```(?:sql|sqlite)?[ \t]*\n?(.*?)(?:```|$)", re.S | re.I)
_BARE = re.compile(r"^\s*(SELECT|WITH)\b", re.I)


def extract_sql(text: str) -> str | None:
    """The query in a completion: an agent-protocol `<answer>`/`<sql>` block, else the last ```sql fence (an
    unclosed one runs to the end), else the text itself when it starts with SELECT/WITH; cut at the first `;`."""
    from agro_jax.rollout.agent import parse_action

    text = text or ""
    action = parse_action(text)
    if action.kind in ("sql", "answer"):
        sql = action.sql
    else:
        blocks = [b.strip() for b in _FENCED.findall(text) if b.strip()]
        sql = blocks[-1] if blocks else (text.strip() if _BARE.match(text) else None)
    if sql is None:
        return None
    sql = sql.split(";")[0].strip()
    return sql or None


class ModelChecker:
    """SQL from a model: `generate_fn(prompts) -> completions`, read with `extract_sql`."""

    name = "model"

    def __init__(self, generate_fn, schema_compact: bool = True, sample_values: int = 1):
        """sample_values 1: with Qwen's tokenizer the embedded DBs' prompts stay under the sampler's 256 bucket."""
        self.generate_fn, self.schema_compact, self.sample_values = generate_fn, schema_compact, sample_values

    def to_sql(self, questions: list[str], contexts: list) -> list[str | None]:
        from agro_jax.sql.schema import render_schema

        prompts = [
            CHECK_PROMPT.format(schema=render_schema(ctx.schema, self.sample_values, self.schema_compact), question=q)
            for q, ctx in zip(questions, contexts, strict=True)
        ]
        texts = list(self.generate_fn(prompts))
        if len(texts) != len(prompts):
            raise ValueError(f"generate_fn returned {len(texts)} completions for {len(prompts)} prompts")
        return [extract_sql(t) for t in texts]
