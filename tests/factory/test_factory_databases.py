"""Embedded domain DBs: seeded and byte-identical, FK-consistent, created in FK order, no constant columns."""

import hashlib
import sqlite3

import pytest

from data_factory.databases import DOMAINS, build_databases, domain_tables


@pytest.fixture(scope="module")
def dbs(tmp_path_factory):
    return build_databases(str(tmp_path_factory.mktemp("a")), DOMAINS, seed=0)


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_six_domains_deterministic_per_seed(dbs, tmp_path):
    assert set(dbs) == {"university", "retail", "flights", "hospital", "library", "sports"}
    again = build_databases(str(tmp_path / "b"), DOMAINS, seed=0)
    other = build_databases(str(tmp_path / "c"), ("university",), seed=1)
    for name in DOMAINS:
        assert _digest(dbs[name]) == _digest(again[name]), name  # byte-identical
    assert _digest(other["university"]) != _digest(dbs["university"])
    # A second build with the same seed reuses the files (stamp), a new seed rebuilds.
    mtime = (tmp_path / "b/university/university.sqlite").stat().st_mtime_ns
    build_databases(str(tmp_path / "b"), ("university",), seed=0)
    assert (tmp_path / "b/university/university.sqlite").stat().st_mtime_ns == mtime
    build_databases(str(tmp_path / "b"), ("university",), seed=1)
    assert _digest(tmp_path / "b/university/university.sqlite") == _digest(other["university"])
    with pytest.raises(ValueError, match="unknown database domain 'nope'"):
        domain_tables("nope", 0)


@pytest.mark.parametrize("name", DOMAINS)
def test_fk_consistent_dag_order_varied_columns(dbs, name):
    conn = sqlite3.connect(dbs[name])
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY rowid")]
    assert len(tables) >= 4
    for i, t in enumerate(tables):
        for fk in conn.execute(f"PRAGMA foreign_key_list({t})"):
            assert fk[2] in tables[:i], f"{t} references {fk[2]} which is created later (not FK/DAG order)"
        n = conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
        assert 8 <= n <= 5000, (t, n)
        for col in (r[1] for r in conn.execute(f"PRAGMA table_info({t})")):
            distinct = conn.execute(f"SELECT COUNT(DISTINCT {col}) FROM {t}").fetchone()[0]
            assert distinct >= 2, f"{name}.{t}.{col} is constant"
    # Child rows spread unevenly over parents (skewed FKs): group sizes differ.
    for t in tables:
        for fk in conn.execute(f"PRAGMA foreign_key_list({t})"):
            sizes = [r[0] for r in conn.execute(f"SELECT COUNT(*) FROM {t} GROUP BY {fk[3]}")]
            assert max(sizes) > 1.5 * min(sizes), (t, fk[3])
