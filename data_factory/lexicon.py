"""Words for schema elements and SQL operators, shared by the question realizer and the rule-based checker.

The realizer turns slots into phrases with `Lexicon.phrase(kind, value, form)`; the checker matches phrases back
with `Lexicon.alternatives(kind, form)` and `Lexicon.decode(...)`. One table of words, read both ways, so a
question the realizer writes is parseable exactly when its phrasing identifies the SQL.

Column kinds (from the introspected schema): key (PK/FK/*_id), num (numeric), date (ISO dates in text),
cat (text with few distinct values), label (other text: names, titles).
"""

from __future__ import annotations

import re

from agro_jax.sql.schema import Schema

_ABBREV = {"dept": "department", "appt": "appointment", "num": "number", "km": "in km", "mg": "in mg"}
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
CAT_MAX_DISTINCT = 40

# op -> phrases, per column kind family. The first phrase is the plain one; all are accepted by the checker.
OPS_NUM = {">": ["is greater than", "is above", "is more than"], "<": ["is less than", "is below"],
           ">=": ["is at least"], "<=": ["is at most"], "=": ["is equal to"]}  # fmt: skip
OPS_DATE = {">": ["is after"], "<": ["is before"]}
OPS_TEXT = {"=": ["is"], "!=": ["is not"], "like": ["starts with"]}
AGGS = {"AVG": ["average", "mean"], "SUM": ["total"], "MAX": ["maximum", "highest"], "MIN": ["minimum", "lowest"]}
DIRS = {"DESC": ["highest", "largest"], "ASC": ["lowest", "smallest"]}
CMPS = {">": ["above", "higher than"], "<": ["below", "lower than"]}
_WORD_KINDS = {"op": (OPS_NUM, OPS_DATE, OPS_TEXT), "agg": (AGGS,), "dir": (DIRS,), "cmp": (CMPS,)}


def words(name: str) -> str:
    parts = re.sub(r"([a-z])([A-Z])", r"\1 \2", name).replace("_", " ").lower().split()
    return " ".join(_ABBREV.get(p, p) for p in parts)


def plural(phrase: str) -> str:
    if phrase.endswith(("s", "x", "ch", "sh")):
        return phrase + "es"
    if phrase.endswith("y") and phrase[-2:-1] not in "aeiou":
        return phrase[:-1] + "ies"
    return phrase + "s"


def article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


class Lexicon:
    """Phrases for one schema (tables, columns, foreign keys) plus the shared operator words."""

    def __init__(self, schema: Schema):
        self.schema = schema
        self.kinds: dict[tuple[str, str], str] = {}
        self._table: dict[str, str] = {}  # table -> singular phrase
        fk_cols = {(fk.table.lower(), fk.column.lower()) for fk in schema.foreign_keys}
        for t in schema.tables:
            w = words(t.name)
            self._table[t.name] = w[:-1] if w.endswith("s") and not w.endswith(("ss", "us")) else w
            for c in t.columns:
                self.kinds[(t.name, c.name)] = _kind(c, (t.name.lower(), c.name.lower()) in fk_cols)
        self._fk = {}
        for fk in schema.foreign_keys:
            w = re.sub(r"\s*\bid$", "", words(fk.column)).strip() or words(fk.ref_table)
            self._fk[(fk.table, fk.column)] = w

    # ---- realizer side -------------------------------------------------------------------------------------------
    def table(self, name: str, form: str = "") -> str:
        one = self._table[name]
        return {"": plural(one), "1": one, "a": article(one)}[form]

    def column(self, table: str, col: str, form: str = "") -> str:
        w = words(col)
        return article(w) if form == "a" else w

    def fk(self, table: str, col: str) -> str:
        return self._fk[(table, col)]

    @staticmethod
    def word(kind: str, value: str, variant: int = 0, col_kind: str = "num") -> str:
        if kind == "op":
            table = OPS_TEXT if col_kind in ("cat", "label") else OPS_NUM
            table = OPS_DATE if col_kind == "date" and value in OPS_DATE else table
        else:
            table = _WORD_KINDS[kind][0]
        options = table[value]
        return options[variant % len(options)]

    # ---- checker side --------------------------------------------------------------------------------------------
    def alternatives(self, kind: str, form: str = "") -> list[str]:
        """Every phrase a slot of this kind can take in this schema (for the checker's regexes)."""
        if kind == "table":
            out = [self.table(t.name, form) for t in self.schema.tables]
        elif kind == "col":
            out = [self.column(t.name, c.name, form) for t in self.schema.tables for c in t.columns]
        elif kind == "fk":
            out = list(self._fk.values())
        else:
            out = [p for table in _WORD_KINDS[kind] for opts in table.values() for p in opts]
        return sorted(set(out), key=lambda s: (-len(s), s))

    def decode_table(self, phrase: str, form: str = "") -> str | None:
        return next((t.name for t in self.schema.tables if self.table(t.name, form) == phrase.lower()), None)

    def decode_column(self, table: str, phrase: str, form: str = "") -> str | None:
        cols = self.schema.table(table).columns
        return next((c.name for c in cols if self.column(table, c.name, form) == phrase.lower()), None)

    def decode_fk(self, phrase: str, table: str | None = None):
        for fk in self.schema.foreign_keys:
            if (table is None or fk.table == table) and self._fk[(fk.table, fk.column)] == phrase.lower():
                return fk
        return None

    @staticmethod
    def decode_word(kind: str, phrase: str) -> str | None:
        for table in _WORD_KINDS[kind]:
            for value, opts in table.items():
                if phrase.lower() in opts:
                    return value
        return None


def _kind(col, is_fk: bool) -> str:
    name = col.name.lower()
    if col.pk or is_fk or name == "id" or name.endswith("_id"):
        return "key"
    t = col.type.upper()
    if any(k in t for k in ("INT", "REAL", "FLOA", "DOUB", "NUM", "DEC")):
        return "num"
    if col.samples and all(isinstance(v, str) and _DATE.match(v) for v in col.samples):
        return "date"
    if col.samples and all(isinstance(v, str) for v in col.samples):
        return "cat" if col.distinct <= CAT_MAX_DISTINCT else "label"
    return "key"  # blobs, empty or mixed columns: never used in synthesized queries
