"""Schema introspection/rendering on the embedded DBs and on real Spider DBs."""

import sqlite3

import pytest

from agro_jax.sql.schema import introspect, render_schema
from data_factory.databases import build_databases


@pytest.fixture(scope="module")
def dbs(tmp_path_factory):
    return build_databases(str(tmp_path_factory.mktemp("dbs")), ("university", "flights"), seed=0)


def _structure(schema):
    return (
        [(t.name, [(c.name, c.type, c.pk) for c in t.columns], t.primary_key) for t in schema.tables],
        sorted((fk.table, fk.column, fk.ref_table, fk.ref_column) for fk in schema.foreign_keys),
    )


def test_introspect_embedded(dbs):
    s = introspect(dbs["university"])
    assert [t.name for t in s.tables] == ["department", "instructor", "student", "course", "enrollment"]
    assert s.table("enrollment").primary_key == ("student_id", "course_id")
    assert s.table("student").primary_key == ("student_id",)
    assert s.fk_of("student", "dept_id").ref_table == "department"
    assert s.table("student").row_count == 400
    grade = s.table("enrollment").column("grade")
    assert len(grade.samples) == 3 and grade.distinct > 3
    # flights has two FKs from one table to the same parent (origin/destination -> airport.code)
    f = introspect(dbs["flights"])
    assert {(fk.column, fk.ref_column) for fk in f.fks_from("flight") if fk.ref_table == "airport"} == {
        ("origin", "code"),
        ("destination", "code"),
    }
    with pytest.raises(KeyError, match="no column 'nope'"):
        s.table("student").column("nope")


def test_render_is_valid_ddl_and_deterministic(dbs, spider_dir):
    paths = [dbs["university"], dbs["flights"]] + sorted(str(p) for p in spider_dir.glob("database/*/*.sqlite"))[:8]
    for path in paths:
        text = render_schema(path)
        assert text == render_schema(path)  # deterministic
        # The DDL (comments included) recreates the same structure in an empty DB.
        conn = sqlite3.connect(":memory:")
        conn.executescript(text)
        src = introspect(path)
        got = [(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY rowid")]
        assert got == [t.name for t in src.tables], path
        for t in src.tables:
            cols = [(r[1], (r[2] or "").upper()) for r in conn.execute(f'PRAGMA table_info("{t.name}")')]
            assert cols == [(c.name, c.type) for c in t.columns], (path, t.name)


def test_compact_is_shorter_and_names_every_column(dbs):
    s = introspect(dbs["university"])
    full, compact = render_schema(s), render_schema(s, compact=True)
    assert len(compact) < 0.8 * len(full)
    assert len(compact.splitlines()) == len(s.tables)
    for t in s.tables:
        line = next(ln for ln in compact.splitlines() if ln.startswith(t.name + "("))
        assert all(c.name in line for c in t.columns)
    assert "-> department.dept_id" in compact and "'East'" not in compact
    assert "['A', 'A-', 'B+']" in compact  # categorical samples shown
    assert "Carol" not in compact  # near-unique names are not (they cost tokens and teach nothing)


def test_missing_db_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.sqlite"):
        introspect(str(tmp_path / "nope.sqlite"))
