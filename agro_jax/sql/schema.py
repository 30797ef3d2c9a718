"""SQLite schema introspection and the schema text that goes into prompts.

    schema = introspect("db.sqlite")                  # tables, columns, types, PKs, FKs, sample values, row counts
    text = render_schema("db.sqlite")                 # DDL with `-- e.g.` sample values (default)
    text = render_schema(schema, compact=True)        # one line per table, for small prompt budgets

Deterministic: tables/columns in declaration order, sample values = the most frequent non-NULL values among the
first `_SAMPLE_SCAN_ROWS` rows (ties broken by value), so the same DB always renders the same text. The DB is opened
read-only; any SQLite file works (Spider/BIRD quirks: untyped columns, FKs to an implicit PK, odd names).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import sqlite3

_SAMPLE_SCAN_ROWS = 5000  # bounds the cost on big (BIRD) tables
_MAX_SAMPLE_CHARS = 30
_COMPACT_MAX_DISTINCT = 40  # compact text shows samples only for categorical columns (few distinct values)
_PLAIN_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    type: str  # declared type, upper-cased ("" when undeclared)
    pk: bool = False
    notnull: bool = False
    samples: tuple = ()
    distinct: int = 0  # distinct non-NULL values among the first _SAMPLE_SCAN_ROWS rows


@dataclasses.dataclass(frozen=True)
class ForeignKey:
    table: str
    column: str
    ref_table: str
    ref_column: str


@dataclasses.dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    row_count: int

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name.lower() == name.lower():
                return c
        raise KeyError(f"table {self.name!r} has no column {name!r}; columns: {[c.name for c in self.columns]}")


@dataclasses.dataclass(frozen=True)
class Schema:
    db_id: str
    db_path: str
    tables: tuple[Table, ...]
    foreign_keys: tuple[ForeignKey, ...]

    def table(self, name: str) -> Table:
        for t in self.tables:
            if t.name.lower() == name.lower():
                return t
        raise KeyError(f"database {self.db_id!r} has no table {name!r}; tables: {[t.name for t in self.tables]}")

    def fks_from(self, table: str) -> list[ForeignKey]:
        return [fk for fk in self.foreign_keys if fk.table.lower() == table.lower()]

    def fk_of(self, table: str, column: str) -> ForeignKey | None:
        return next((fk for fk in self.fks_from(table) if fk.column.lower() == column.lower()), None)


def quote(name: str) -> str:
    """SQL identifier, double-quoted only when it is not a plain identifier."""
    return name if _PLAIN_IDENT.match(name) and name.upper() not in _RESERVED else '"' + name.replace('"', '""') + '"'


_RESERVED = {"ORDER", "GROUP", "SELECT", "FROM", "WHERE", "TABLE", "INDEX", "KEY", "LIMIT", "JOIN", "TO", "BY", "AS"}


def _connect(db_path: str) -> sqlite3.Connection:
    if not os.path.isfile(db_path):
        raise FileNotFoundError(f"SQLite database not found: {db_path}")
    conn = sqlite3.connect(pathlib.Path(db_path).resolve().as_uri() + "?mode=ro", uri=True)
    conn.text_factory = lambda b: b.decode("utf-8", errors="replace")
    return conn


def _samples(conn, table: str, col: str, n: int) -> tuple[tuple, int]:
    """(most frequent values, distinct count) over the first _SAMPLE_SCAN_ROWS rows."""
    if n <= 0:
        return (), 0
    q, c = quote(table), quote(col)
    sub = f"(SELECT {c} AS v FROM {q} LIMIT {_SAMPLE_SCAN_ROWS}) WHERE v IS NOT NULL"
    try:
        values = tuple(
            r[0] for r in conn.execute(f"SELECT v FROM {sub} GROUP BY v ORDER BY COUNT(*) DESC, v LIMIT {n}")
        )
        return values, conn.execute(f"SELECT COUNT(DISTINCT v) FROM {sub}").fetchone()[0]
    except sqlite3.Error:
        return (), 0


def introspect(db_path: str, sample_values: int = 3) -> Schema:
    """Reads tables (sqlite_master order), columns, PK, FKs, row counts and up to `sample_values` values per column."""
    conn = _connect(db_path)
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid"
            )
        ]
        tables, fks = [], []
        for name in names:
            info = conn.execute(f"PRAGMA table_info({quote(name)})").fetchall()  # cid, name, type, notnull, dflt, pk
            pk = tuple(r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5]))
            cols = tuple(
                Column(r[1], (r[2] or "").upper(), bool(r[5]), bool(r[3]), *_samples(conn, name, r[1], sample_values))
                for r in info
            )
            try:
                count = conn.execute(f"SELECT COUNT(*) FROM {quote(name)}").fetchone()[0]
            except sqlite3.Error:
                count = 0
            tables.append(Table(name, cols, pk, count))
            for r in conn.execute(f"PRAGMA foreign_key_list({quote(name)})"):  # id, seq, table, from, to, ...
                fks.append((name, r[3], r[2], r[4]))
        by_name = {t.name.lower(): t for t in tables}
        resolved = []
        for table, col, ref_table, ref_col in fks:
            ref = by_name.get(ref_table.lower())
            if ref is None:
                continue  # dangling FK (happens in Spider): not a usable join path
            if ref_col is None:  # FK to the implicit primary key
                if len(ref.primary_key) != 1:
                    continue
                ref_col = ref.primary_key[0]
            resolved.append(ForeignKey(table, col, ref.name, ref_col))
    finally:
        conn.close()
    db_id = os.path.splitext(os.path.basename(db_path))[0]
    return Schema(db_id, db_path, tuple(tables), tuple(resolved))


def _fmt_value(v) -> str:
    if isinstance(v, str):
        v = v if len(v) <= _MAX_SAMPLE_CHARS else v[: _MAX_SAMPLE_CHARS - 3] + "..."
        return "'" + v.replace("'", "''").replace("\n", " ") + "'"
    if isinstance(v, bytes):
        return "<blob>"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def render_schema(db, sample_values: int = 3, compact: bool = False) -> str:
    """`db`: a path or a Schema. DDL-style text (default) or one line per table (`compact=True`; samples only for
    categorical text columns, the values questions mention verbatim)."""
    schema = db if isinstance(db, Schema) else introspect(db, sample_values)
    lines = []
    for t in schema.tables:
        fk_by_col = {fk.column.lower(): fk for fk in schema.fks_from(t.name)}
        single_pk = t.primary_key[0] if len(t.primary_key) == 1 else None
        parts = []
        for c in t.columns:
            fk = fk_by_col.get(c.name.lower())
            samples = [_fmt_value(v) for v in c.samples[:sample_values]]
            if compact:
                is_key = fk is not None or c.name == single_pk  # keys: "PK" / "-> t.c" say enough, skip the type
                s = quote(c.name) if is_key else f"{quote(c.name)} {c.type or 'ANY'}"
                s += " PK" if c.name == single_pk else ""
                s += f" -> {quote(fk.ref_table)}.{quote(fk.ref_column)}" if fk else ""
                is_text = "CHAR" in c.type or "TEXT" in c.type or c.type == "" or "CLOB" in c.type
                categorical = is_text and c.distinct <= _COMPACT_MAX_DISTINCT
                if samples and categorical and not fk and c.name != single_pk:
                    s += f" [{', '.join(samples)}]"
            else:
                s = f"{quote(c.name)} {c.type}".rstrip()
                s += " PRIMARY KEY" if c.name == single_pk else ""
                s += f" REFERENCES {quote(fk.ref_table)}({quote(fk.ref_column)})" if fk else ""
                s = (s, f" -- e.g. {', '.join(samples)}" if samples else "")
            parts.append(s)
        if compact:
            key = f" PK({', '.join(map(quote, t.primary_key))})" if len(t.primary_key) > 1 else ""
            lines.append(f"{quote(t.name)}({', '.join(parts)}){key}")
        else:
            if len(t.primary_key) > 1:
                parts.append((f"PRIMARY KEY ({', '.join(map(quote, t.primary_key))})", ""))
            body = [decl + ("," if i < len(parts) - 1 else "") + note for i, (decl, note) in enumerate(parts)]
            lines.append(f"CREATE TABLE {quote(t.name)} (\n  " + "\n  ".join(body) + "\n);")
    return "\n".join(lines)
