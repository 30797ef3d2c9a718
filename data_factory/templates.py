"""SQL templates: typed slots + a SQL pattern. Phrasings for each template live in synth_question.py.

Slot kinds: table; col (owner = its table slot, kinds = allowed column kinds); fk (owner = child table slot,
ref = parent table slot; fills both tables); op (ref = its column slot); val (ref = its op slot; a literal drawn
from the data); agg / dir / cmp / int (kinds = the options). In the SQL pattern a col slot `c` renders as
`table.col` and `c_` as the bare column; an fk slot renders `.join`, `.col` (child side), `.ref` (parent side).
`probe` (optional) is a query over the other slots returning group sizes; `probe_slot` gets a threshold from them.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Slot:
    name: str
    kind: str
    owner: str = ""
    ref: str = ""
    kinds: tuple = ()
    distinct: tuple = ()  # fk: parent table must differ from these table slots


@dataclasses.dataclass(frozen=True)
class Template:
    name: str
    level: str  # nominal; the recorded difficulty is computed from the AST
    slots: tuple[Slot, ...]
    sql: str
    probe: str = ""
    probe_slot: str = ""


def T(name):
    return Slot(name, "table")


def C(name, owner, kinds="label cat"):
    return Slot(name, "col", owner, kinds=tuple(kinds.split()))


def FK(name, child, parent, distinct=()):
    return Slot(name, "fk", child, parent, distinct=tuple(distinct))


def COND(i=""):
    """op + val for column slot c{i}: e.g. `{c2} {op} {v}`."""
    return (Slot(f"op{i}", "op", ref=f"c{i}" if i else "c2"), Slot(f"v{i}", "val", ref=f"op{i}"))


ANY = "num date cat label"
AGG = Slot("agg", "agg", kinds=("AVG", "SUM", "MAX", "MIN"))
DIR = Slot("dir", "dir", kinds=("DESC", "ASC"))
CMP = Slot("cmp", "cmp", kinds=(">", "<"))


def INT(name, *options):
    return Slot(name, "int", kinds=tuple(options))


_S = "simple"
_M = "moderate"
_C = "complex"
_H = "highly_complex"

TEMPLATES: tuple[Template, ...] = (
    # ---- single table ----
    Template("filter_select", _S, (T("t1"), C("c1", "t1"), C("c2", "t1", ANY), *COND()),
             "SELECT {c1} FROM {t1} WHERE {c2} {op} {v}"),
    Template("filter_count", _S, (T("t1"), C("c2", "t1", ANY), *COND()),
             "SELECT COUNT(*) FROM {t1} WHERE {c2} {op} {v}"),
    Template("agg_all", _S, (T("t1"), AGG, C("c1", "t1", "num")), "SELECT {agg}({c1}) FROM {t1}"),
    Template("agg_filter", _S, (T("t1"), AGG, C("c1", "t1", "num"), C("c2", "t1", ANY), *COND()),
             "SELECT {agg}({c1}) FROM {t1} WHERE {c2} {op} {v}"),
    Template("distinct_values", _S, (T("t1"), C("c1", "t1", "cat")), "SELECT DISTINCT {c1} FROM {t1}"),
    Template("top_1", _S, (T("t1"), C("c1", "t1", "label"), C("c2", "t1", "num date"), DIR),
             "SELECT {c1} FROM {t1} ORDER BY {c2} {dir} LIMIT 1"),
    Template("top_k", _S, (T("t1"), C("c1", "t1", "label"), C("c2", "t1", "num date"), DIR, INT("n", 3, 5)),
             "SELECT {c1} FROM {t1} ORDER BY {c2} {dir} LIMIT {n}"),
    Template("count_distinct", _M, (T("t1"), C("c1", "t1")), "SELECT COUNT(DISTINCT {c1}) FROM {t1}"),
    Template("group_count", _M, (T("t1"), C("c1", "t1", "cat")), "SELECT {c1}, COUNT(*) FROM {t1} GROUP BY {c1}"),
    Template("group_agg", _M, (T("t1"), C("c1", "t1", "cat"), AGG, C("c2", "t1", "num")),
             "SELECT {c1}, {agg}({c2}) FROM {t1} GROUP BY {c1}"),
    Template("group_top", _M, (T("t1"), C("c1", "t1", "cat")),
             "SELECT {c1} FROM {t1} GROUP BY {c1} ORDER BY COUNT(*) DESC LIMIT 1"),
    # ---- joins over FK paths ----
    Template("join_filter", _M, (FK("fk", "t1", "t2"), T("t1"), T("t2"), C("c1", "t1"), C("c2", "t2", ANY), *COND()),
             "SELECT {c1} FROM {t1} {fk.join} WHERE {c2} {op} {v}"),
    Template("join_count", _M, (FK("fk", "t1", "t2"), T("t1"), T("t2"), C("c2", "t2", ANY), *COND()),
             "SELECT COUNT(*) FROM {t1} {fk.join} WHERE {c2} {op} {v}"),
    Template("join_group_count", _C, (FK("fk", "t1", "t2"), T("t1"), T("t2"), C("c2", "t2")),
             "SELECT {c2}, COUNT(*) FROM {t1} {fk.join} GROUP BY {c2}"),
    Template("join_group_agg", _C, (FK("fk", "t1", "t2"), T("t1"), T("t2"), C("c2", "t2"), AGG, C("c1", "t1", "num")),
             "SELECT {c2}, {agg}({c1}) FROM {t1} {fk.join} GROUP BY {c2}"),
    Template("chain_count", _C, (FK("fk", "t1", "t2"), FK("fk2", "t2", "t3", ("t1",)), T("t1"), T("t2"), T("t3"),
                                 C("c3", "t3", ANY), *COND(3)),
             "SELECT COUNT(*) FROM {t1} {fk.join} {fk2.join} WHERE {c3} {op3} {v3}"),
    Template("bridge_filter", _C, (FK("fk", "b", "t1"), FK("fk2", "b", "t3", ("t1",)), T("b"), T("t1"), T("t3"),
                                   C("c1", "t1", "label"), C("c3", "t3", ANY), *COND(3)),
             "SELECT DISTINCT {c1} FROM {t1} JOIN {b} ON {fk.col} = {fk.ref} JOIN {t3} ON {fk2.col} = {fk2.ref} "
             "WHERE {c3} {op3} {v3}"),
    # ---- nesting, HAVING, set operations, CASE ----
    Template("group_having", _C, (T("t1"), C("c1", "t1"), INT("n")),
             "SELECT {c1} FROM {t1} GROUP BY {c1} HAVING COUNT(*) > {n}",
             probe="SELECT COUNT(*) FROM {t1} GROUP BY {c1}", probe_slot="n"),
    Template("above_avg", _C, (T("t1"), C("c1", "t1"), C("c2", "t1", "num"), CMP),
             "SELECT {c1} FROM {t1} WHERE {c2} {cmp} (SELECT AVG({c2}) FROM {t1})"),
    Template("not_in", _C, (FK("fk", "t1", "t2"), T("t1"), T("t2"), C("c2", "t2")),
             "SELECT {c2} FROM {t2} WHERE {fk.ref} NOT IN (SELECT {fk.col} FROM {t1} WHERE {fk.col} IS NOT NULL)"),
    Template("in_subquery", _C, (FK("fk", "t1", "t2"), T("t1"), T("t2"), C("c1", "t1"), C("c2", "t2", ANY), *COND()),
             "SELECT {c1} FROM {t1} WHERE {fk.col} IN (SELECT {fk.ref} FROM {t2} WHERE {c2} {op} {v})"),
    Template("case_count", _C, (T("t1"), C("c1", "t1", "cat"), C("c2", "t1", ANY), *COND()),
             "SELECT {c1}, SUM(CASE WHEN {c2} {op} {v} THEN 1 ELSE 0 END) FROM {t1} GROUP BY {c1}"),
    *(
        Template(f"set_{op.lower()}", _C, (T("t1"), C("c1", "t1"), C("c2", "t1", ANY), *COND(), C("c3", "t1", ANY),
                                            *COND(3)),
                 "SELECT {c1} FROM {t1} WHERE {c2} {op} {v} " + op + " SELECT {c1} FROM {t1} WHERE {c3} {op3} {v3}")
        for op in ("UNION", "INTERSECT", "EXCEPT")
    ),
    # ---- windows, CTEs, nested aggregates ----
    Template("join_having_order", _H, (FK("fk", "t1", "t2"), T("t1"), T("t2"), C("c2", "t2"), AGG,
                                       C("c1", "t1", "num"), INT("n"), DIR, INT("k", 3, 5)),
             "SELECT {c2}, {agg}({c1}) FROM {t1} {fk.join} GROUP BY {c2} HAVING COUNT(*) >= {n} "
             "ORDER BY {agg}({c1}) {dir} LIMIT {k}",
             probe="SELECT COUNT(*) FROM {t1} {fk.join} GROUP BY {c2}", probe_slot="n"),
    Template("window_top", _H, (T("t1"), C("g", "t1", "cat"), C("c1", "t1", "label"), C("c2", "t1", "num date"), DIR),
             "SELECT {g_}, {c1_}, {c2_} FROM (SELECT {g}, {c1}, {c2}, RANK() OVER (PARTITION BY {g} "
             "ORDER BY {c2} {dir}) AS rnk FROM {t1}) WHERE rnk = 1"),
    Template("window_topn", _H, (T("t1"), C("c1", "t1", "label"), C("c2", "t1", "num"), INT("n", 2, 3, 5)),
             "SELECT {c1_}, {c2_} FROM (SELECT {c1}, {c2}, DENSE_RANK() OVER (ORDER BY {c2} DESC) AS r "
             "FROM {t1}) WHERE r <= {n}"),
    Template("group_avg_above", _H, (T("t1"), C("c1", "t1", "cat"), C("c2", "t1", "num")),
             "SELECT {c1} FROM {t1} GROUP BY {c1} HAVING AVG({c2}) > (SELECT AVG({c2}) FROM {t1})"),
    Template("cte_above_avg", _H, (FK("fk", "t1", "t2"), T("t1"), T("t2"), C("c2", "t2")),
             "WITH per AS (SELECT {c2} AS k, COUNT(*) AS cnt FROM {t1} {fk.join} GROUP BY {c2}) "
             "SELECT k FROM per WHERE cnt > (SELECT AVG(cnt) FROM per)"),
)  # fmt: skip
BY_NAME = {t.name: t for t in TEMPLATES}
