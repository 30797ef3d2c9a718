"""SQL-first synthesis: schema-aware templates filled with columns along FK paths and literals drawn from the data.

A candidate's spec is (template name, slots): slots name tables, columns, foreign keys, operators, aggregates and
literals. The same spec renders the SQL here and the question in synth_question.py, and the rule-based checker in
checker.py rebuilds a spec from the question alone and renders it with the same `render_sql`.

    ctx = DbContext(db_path)                      # schema + lexicon + a read-only value profile
    cands = synthesize(ctx, 50, random.Random(0))  # [Candidate(sql, template, slots, difficulty, skeleton, ...)]

Difficulty is computed from the sqlglot AST (`difficulty(sql)`), not taken from the template, so imported data
gets the same buckets: joins, aggregates, GROUP BY/HAVING, ORDER BY/LIMIT, subqueries, set operations, CTEs, CASE,
window functions and extra predicates add to a score (simple <= 1 < moderate <= 3 < complex <= 5 < highly_complex).
"""

from __future__ import annotations

import dataclasses
import pathlib
import random
import sqlite3
import types

import sqlglot
from sqlglot import exp

from agro_jax.sql.schema import introspect, quote
from data_factory.lexicon import Lexicon
from data_factory.templates import TEMPLATES, Template

LEVELS = ("simple", "moderate", "complex", "highly_complex")
_NICE = 10000  # comparison literals >= this are rounded to 2 significant digits ("salary above 85000")


@dataclasses.dataclass
class Candidate:
    db_id: str
    db_path: str
    template: str
    slots: dict
    sql: str
    difficulty: str
    skeleton: str
    question: str = ""
    style: int = 0  # phrasing index; regeneration moves to the next one
    cycles: int = 0  # generation-as-check cycles used
    evidence: str = ""
    source: str = "factory"


class DbContext:
    """One database: schema, lexicon and a cached, read-only value profile for literal sampling."""

    def __init__(self, db_path: str):
        self.db_path = db_path
        self.schema = introspect(db_path, sample_values=3)
        self.db_id = self.schema.db_id
        self.lex = Lexicon(self.schema)
        self._conn = sqlite3.connect(pathlib.Path(db_path).resolve().as_uri() + "?mode=ro", uri=True)
        self._values: dict = {}

    def query(self, sql: str) -> list[tuple]:
        return self._conn.execute(sql).fetchall()

    def values(self, table: str, col: str) -> list:
        """Sorted non-NULL values of a column (the DBs are small; BIRD-size tables are sampled)."""
        key = (table, col)
        if key not in self._values:
            q = f"SELECT {quote(col)} FROM {quote(table)} WHERE {quote(col)} IS NOT NULL LIMIT 20000"
            self._values[key] = sorted(r[0] for r in self.query(q) if not isinstance(r[0], bytes))
        return self._values[key]

    def columns(self, table: str, kinds: tuple[str, ...]) -> list[str]:
        return [c.name for c in self.schema.table(table).columns if self.lex.kinds[(table, c.name)] in kinds]

    def kind(self, table: str, col: str) -> str:
        return self.lex.kinds[(table, col)]


# ---- literals ------------------------------------------------------------------------------------------------------
def nice(v):
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, int | float) and abs(v) >= _NICE:
        v = int(float(f"{v:.2g}"))
    elif isinstance(v, float):
        v = round(v, 2)
    return v


def literal_sql(v, op: str = "") -> str:
    if op == "like":
        return "'" + str(v).replace("'", "''") + "%'"
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    return repr(v) if isinstance(v, float) else str(v)


def _sample_op(ctx: DbContext, table: str, col: str, rng: random.Random) -> str:
    kind = ctx.kind(table, col)
    if kind == "num":
        ops = [">", "<", ">=", "<="] + (["="] if len(set(ctx.values(table, col))) <= 12 else [])
    elif kind == "date":
        ops = [">", "<"]
    elif kind == "cat":
        ops = ["=", "=", "!="]
    else:
        ops = ["=", "like"]
    return rng.choice(ops)


def _sample_value(ctx: DbContext, table: str, col: str, op: str, rng: random.Random):
    vals = ctx.values(table, col)
    if not vals:
        return None
    if op in (">", "<", ">=", "<="):
        return nice(vals[int(len(vals) * rng.uniform(0.2, 0.8))])
    v = rng.choice(sorted(set(vals)))
    if op == "like":
        v = str(v)[:2]
        return v if len(v) == 2 and v.isalpha() else None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return None if isinstance(v, str) and '"' in v else v  # equality: the exact stored value


# ---- spec -> SQL ---------------------------------------------------------------------------------------------------
def _fk_ns(fk):
    col, ref = f"{quote(fk.table)}.{quote(fk.column)}", f"{quote(fk.ref_table)}.{quote(fk.ref_column)}"
    return types.SimpleNamespace(col=col, ref=ref, join=f"JOIN {quote(fk.ref_table)} ON {col} = {ref}")


def render_sql(template: Template, slots: dict, ctx: DbContext) -> str:
    """The SQL for a filled spec, normalised by sqlglot (sqlite dialect)."""
    env = {}
    for s in template.slots:
        v = slots.get(s.name)
        if s.kind == "table":
            env[s.name] = quote(v)
        elif s.kind == "col":
            env[s.name], env[s.name + "_"] = f"{quote(slots[s.owner])}.{quote(v)}", quote(v)
        elif s.kind == "fk":
            env[s.name] = _fk_ns(ctx.schema.fk_of(slots[s.owner], v))
        elif s.kind == "val":
            env[s.name] = literal_sql(v, slots[s.ref])
        elif s.kind == "op":
            env[s.name] = {"like": "LIKE", "!=": "<>"}.get(v, v)
        else:
            env[s.name] = str(v)
    return sqlglot.transpile(template.sql.format(**env), read="sqlite", write="sqlite")[0]


# ---- sampling ------------------------------------------------------------------------------------------------------
def _fill(t: Template, ctx: DbContext, rng: random.Random) -> dict | None:
    slots: dict = {}
    used: set = set()
    fks = list(ctx.schema.foreign_keys)
    for s in t.slots:
        if s.kind == "table":
            if s.name not in slots:
                slots[s.name] = rng.choice(ctx.schema.tables).name
        elif s.kind == "fk":  # s.owner = child table slot, s.ref = parent table slot
            ok = [
                fk
                for fk in fks
                if fk.table != fk.ref_table
                and (s.owner not in slots or fk.table == slots[s.owner])
                and (s.ref not in slots or fk.ref_table == slots[s.ref])
                and fk.ref_table not in (slots.get(n) for n in s.distinct)
                and (fk.table, fk.column) not in used
            ]
            if not ok:
                return None
            fk = rng.choice(ok)
            slots[s.name], slots[s.owner], slots[s.ref] = fk.column, fk.table, fk.ref_table
            used.add((fk.table, fk.column))
        elif s.kind == "col":
            cols = [c for c in ctx.columns(slots[s.owner], s.kinds) if (slots[s.owner], c) not in used]
            if not cols:
                return None
            slots[s.name] = rng.choice(cols)
            used.add((slots[s.owner], slots[s.name]))
        elif s.kind == "op":
            col = next(x for x in t.slots if x.name == s.ref)
            slots[s.name] = _sample_op(ctx, slots[col.owner], slots[s.ref], rng)
        elif s.kind == "val":
            op_slot = next(x for x in t.slots if x.name == s.ref)
            col = next(x for x in t.slots if x.name == op_slot.ref)
            v = _sample_value(ctx, slots[col.owner], slots[col.name], slots[s.ref], rng)
            if v is None:
                return None
            slots[s.name] = v
        elif s.kind in ("agg", "dir", "cmp"):
            slots[s.name] = rng.choice(s.kinds)
        elif s.kind == "int":
            slots[s.name] = rng.choice(s.kinds) if s.kinds else None
    if slots.get("agg") == "SUM" and any("year" in str(slots.get(x.name, "")) for x in t.slots if x.kind == "col"):
        slots["agg"] = "AVG"  # a sum of years means nothing
    if t.probe:  # data-dependent integer (a HAVING threshold between the 40th and 80th percentile of group sizes)
        env_t = dataclasses.replace(t, sql=t.probe)
        try:
            counts = sorted(r[0] for r in ctx.query(render_sql(env_t, slots, ctx)))
        except sqlite3.Error:
            return None
        if len(counts) < 3 or counts[0] == counts[-1]:
            return None
        slots[t.probe_slot] = counts[int(len(counts) * rng.uniform(0.4, 0.8))]
    return slots


def synthesize(ctx: DbContext, n: int, rng: random.Random, template_weights: dict[str, float] | None = None):
    """Up to `n` candidates on one DB (a few fills fail and are skipped). Weights default to uniform."""
    names = [t.name for t in TEMPLATES]
    weights = [float((template_weights or {}).get(nm, 1.0)) for nm in names]
    out = []
    for _ in range(n):
        t = TEMPLATES[rng.choices(range(len(names)), weights=weights)[0]]
        for _attempt in range(4):
            slots = _fill(t, ctx, rng)
            if slots is not None:
                break
        if slots is None:
            continue
        sql = render_sql(t, slots, ctx)
        out.append(Candidate(ctx.db_id, ctx.db_path, t.name, slots, sql, difficulty(sql), skeleton(sql)))
    return out


# ---- AST features --------------------------------------------------------------------------------------------------
_WEIGHTS = dict(joins=2, agg=1, group=1, having=2, order=1, subqueries=3, setops=3, ctes=3, case=2, window=3,
                distinct=1, extra_predicates=1)  # fmt: skip


def sql_features(sql: str) -> dict[str, int]:
    tree = sqlglot.parse_one(sql, read="sqlite")
    count = lambda *types_: sum(1 for _ in tree.find_all(*types_))
    setops, ctes = count(exp.Union, exp.Intersect, exp.Except), count(exp.CTE)
    preds = sum(count(k) for k in (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Like, exp.In, exp.Is))
    joins = count(exp.Join)
    return dict(
        joins=joins,
        agg=int(count(exp.AggFunc) > 0),
        group=count(exp.Group),
        having=count(exp.Having),
        order=int(count(exp.Order) + count(exp.Limit) > 0),
        subqueries=max(0, count(exp.Select) - 1 - setops - ctes),
        setops=setops,
        ctes=ctes,
        case=count(exp.Case),
        window=count(exp.Window),
        distinct=count(exp.Distinct),
        extra_predicates=max(0, preds - joins - 1),
    )


def difficulty_score(sql: str) -> int:
    return sum(_WEIGHTS[k] * v for k, v in sql_features(sql).items())


def difficulty(sql: str) -> str:
    score = difficulty_score(sql)
    return LEVELS[0] if score <= 1 else LEVELS[1] if score <= 3 else LEVELS[2] if score <= 5 else LEVELS[3]


def skeleton(sql: str, mask_identifiers: bool = True) -> str:
    """SQL with literals masked as `?` (and identifiers as `_` when mask_identifiers): the structure of a query."""
    tree = sqlglot.parse_one(sql, read="sqlite")

    def mask(node):
        if isinstance(node, exp.Literal):
            return exp.Placeholder()
        if mask_identifiers and isinstance(node, exp.Identifier):
            return exp.to_identifier("_")
        return node

    return tree.transform(mask).sql("sqlite")
