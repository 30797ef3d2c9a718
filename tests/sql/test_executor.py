"""Executor pool: hostile queries get classified errors within their deadline and leave the DB byte-identical;
killed workers lose no request; caches, caps and non-UTF-8 text behave."""

import hashlib
import os
import shutil
import signal
import sqlite3
import threading
import time

import pytest

from agro_jax.sql.executor import Executor, Query

TIMEOUT_S = 1.0
_SLOW_SQL = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < {n}) SELECT count(*) FROM c"
_CROSS12 = "SELECT count(*) FROM " + ", ".join(f"singer s{i}" for i in range(12))

# (name, sql, acceptable error kinds). Every one must fail with a clear message and leave the DB untouched.
HOSTILE = [
    (
        "runaway recursive CTE",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c",
        {"timeout"},
    ),
    ("cross-join explosion", _CROSS12, {"timeout"}),
    (
        "recursive UNION (growing dedup table)",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION SELECT x+1 FROM c) SELECT count(*) FROM c",
        {"timeout", "too_large"},
    ),
    (
        "sort of big blobs (heap bomb)",
        "SELECT count(*) FROM (SELECT randomblob(5000000) AS b FROM singer a, singer b, singer c ORDER BY b)",
        {"too_large", "timeout"},
    ),
    ("replace over zeroblob", "SELECT replace(zeroblob(100000000), x'00', 'aaaa')", {"too_large"}),
    ("huge zeroblob", "SELECT zeroblob(2000000000)", {"too_large"}),
    ("huge randomblob", "SELECT randomblob(500000000)", {"too_large"}),
    ("randomblob over cell cap", "SELECT randomblob(1000000)", {"too_large"}),
    (
        "group_concat bomb",
        "SELECT group_concat(a.name || b.name || c.name || d.name) FROM singer a, singer b, "
        "singer c, singer d, singer e, singer f, singer g",
        {"too_large", "timeout"},
    ),
    ("printf + replace bomb", "SELECT length(replace(printf('%.*c', 5000000, 'x'), 'x', 'xxxx'))", {"too_large"}),
    ("UPDATE", "UPDATE singer SET name = 'x'", {"denied"}),
    ("DELETE", "DELETE FROM singer", {"denied"}),
    ("DROP TABLE", "DROP TABLE singer", {"denied"}),
    ("INSERT", "INSERT INTO singer (Singer_ID) VALUES (999)", {"denied"}),
    ("REPLACE INTO", "REPLACE INTO singer (Singer_ID) VALUES (1)", {"denied"}),
    ("CREATE TABLE", "CREATE TABLE t (x)", {"denied"}),
    ("CREATE TEMP TABLE", "CREATE TEMP TABLE t AS SELECT * FROM singer", {"denied"}),
    ("CREATE TEMP VIEW", "CREATE TEMP VIEW v AS SELECT 1", {"denied"}),
    ("ATTACH", "ATTACH DATABASE '/tmp/agro_attack.db' AS x", {"denied"}),
    ("DETACH", "DETACH DATABASE main", {"denied"}),
    ("VACUUM INTO", "VACUUM INTO '/tmp/agro_vacuum_copy.db'", {"denied"}),
    ("VACUUM", "VACUUM", {"denied"}),
    ("REINDEX", "REINDEX", {"denied"}),
    ("ANALYZE", "ANALYZE", {"denied"}),
    ("BEGIN", "BEGIN IMMEDIATE", {"denied"}),
    ("load_extension", "SELECT load_extension('/tmp/evil.so')", {"denied"}),
    ("PRAGMA writable_schema", "PRAGMA writable_schema = 1", {"denied"}),
    ("PRAGMA journal_mode", "PRAGMA journal_mode = WAL", {"denied"}),
    ("PRAGMA hard_heap_limit reset", "PRAGMA hard_heap_limit = 0", {"denied"}),
    ("table-valued pragma write", "SELECT * FROM pragma_journal_mode('wal')", {"denied"}),
    ("CTE then DELETE", "WITH x AS (SELECT 1) DELETE FROM singer", {"denied"}),
    ("comment-hidden DROP", "/* hi */ -- there\n DROP TABLE singer", {"denied"}),
    ("parenthesised DELETE", "(DELETE FROM singer)", {"denied", "syntax"}),
    ("multiple statements", "SELECT 1; DROP TABLE singer", {"denied"}),
    ("syntax garbage", "SELECT FROM WHERE ((( ,,", {"syntax"}),
    ("not SQL", "hello world", {"denied"}),
    ("empty string", "", {"syntax"}),
    ("comment only", "-- nothing here", {"syntax"}),
    ("lone surrogate (non-UTF-8) in query", "SELECT '\udcff'", {"encoding"}),
    ("very long SQL", "SELECT " + "+".join(["1"] * 60000), {"too_large"}),
    ("deep nesting", "SELECT " + "(SELECT " * 3000 + "1" + ")" * 3000, {"too_large"}),
    ("pathological LIKE pattern", "SELECT 'aaaa' LIKE '" + "%a" * 600 + "'", {"too_large"}),
    ("missing table", "SELECT * FROM no_such_table", {"runtime"}),
]


def _cpu_s(pid):
    """CPU seconds (user + system) a process has used so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def db(spider_dir, tmp_path_factory):
    """A private copy of concert_singer plus a table holding invalid UTF-8 text."""
    path = tmp_path_factory.mktemp("exec") / "concert_singer.sqlite"
    shutil.copy(spider_dir / "database/concert_singer/concert_singer.sqlite", path)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE weird (t TEXT)")
        conn.execute("INSERT INTO weird VALUES (CAST(x'41ff42' AS TEXT))")
    conn.close()
    return str(path)


@pytest.fixture(scope="module")
def executor():
    with Executor(num_workers=2, timeout_s=TIMEOUT_S, max_rows=100) as ex:
        yield ex


def test_hostile_queries_fail_cleanly_and_leave_db_identical(db, executor):
    before = {p: _sha(p) for p in (db,)}
    files_before = set(os.listdir(os.path.dirname(db)))
    queries = [Query(db, sql) for _, sql, _ in HOSTILE] + [Query(db, "SELECT count(*) FROM singer")]
    assert len(HOSTILE) >= 30
    results = executor.run_many(queries)
    for (name, _, kinds), r in zip(HOSTILE, results):
        assert r.error_kind in kinds, f"{name}: got {r.error_kind} ({r.error_message!r}), wanted one of {kinds}"
        assert r.error_message, f"{name}: no error message"
        assert r.rows == () and not r.ok
        # a parent kill reports its real wall time: the kill deadline plus the wait's lag on a loaded machine
        assert r.elapsed_s <= TIMEOUT_S * 1.5 + executor.kill_grace_s + 1.0, f"{name} ran past its deadline"
    assert results[-1].ok and results[-1].rows == ((6,),)
    assert {p: _sha(p) for p in before} == before
    assert set(os.listdir(os.path.dirname(db))) == files_before  # no journal/wal/shm files either
    assert not os.path.exists("/tmp/agro_vacuum_copy.db") and not os.path.exists("/tmp/agro_attack.db")
    # the pool still serves correct answers afterwards
    again = executor.run_many([Query(db, "SELECT name FROM singer WHERE Singer_ID = 1")] * 4)
    assert all(r.rows == (("Joe Sharp",),) for r in again)


def test_results_caps_pragmas_and_non_utf8(db, executor):
    r = executor.run(Query(db, "SELECT t FROM weird"))
    assert r.ok and r.rows == (("A\ufffdB",),)
    r = executor.run(Query(db, "SELECT a.Singer_ID FROM singer a, singer b, singer c"))  # 216 rows > max_rows 100
    assert r.ok and r.truncated and len(r.rows) == 100
    r = executor.run(Query(db, "SELECT Singer_ID FROM singer", max_rows=3))
    assert r.truncated and [x[0] for x in r.rows] == [1, 2, 3]
    r = executor.run(Query(db, "PRAGMA table_info(singer)"))
    assert r.ok and r.rows[1][1] == "Name"
    r = executor.run(Query(db, "SELECT x'00ff', 1.5, NULL, 'é'"))
    assert r.rows == ((b"\x00\xff", 1.5, None, "é"),) and r.columns == ("x'00ff'", "1.5", "NULL", "'é'")
    r = executor.run(Query(db + ".missing", "SELECT 1"))
    assert r.error_kind == "db_error" and not os.path.exists(db + ".missing")


def test_gold_cache_and_reopen_after_change(tmp_path, executor):
    path = str(tmp_path / "t.sqlite")
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    q = Query(path, "SELECT x FROM t")
    hits = executor.stats["cache_hits"]
    assert executor.run(q, use_cache=True).rows == ((1,),)
    assert executor.run(q, use_cache=True).rows == ((1,),)
    assert executor.stats["cache_hits"] == hits + 1
    time.sleep(0.01)
    with sqlite3.connect(path) as conn:  # rewrite the file: cached connections must notice (mtime/size)
        conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(2, 500)])
    conn.close()
    assert [r.rows[-1] for r in executor.run_many([Query(path, "SELECT max(x) FROM t")] * 2)] == [(499,)] * 2


def test_parent_kills_uninterruptible_query(db):
    # A naive substring search runs inside one SQLite call: the progress handler never fires, the parent must kill.
    with Executor(num_workers=1, timeout_s=0.2, kill_grace_s=0.1) as ex:
        pid = ex.worker_pids()[0]
        bomb = Query(db, "SELECT instr(hex(zeroblob(3500000)), hex(zeroblob(1500000)) || '1')")
        ok = Query(db, "SELECT count(*) FROM singer")
        results = ex.run_many([bomb, ok, bomb, ok])
        assert [r.error_kind for r in results] == ["timeout", None, "timeout", None]
        assert results[1].rows == ((6,),) and results[3].rows == ((6,),)
        assert results[0].elapsed_s >= 0.2 * 1.5 + 0.1  # the real wall time, not the nominal limit
        assert ex.stats["kills"] == 2 and ex.worker_pids()[0] != pid


def test_sigkill_mid_query_loses_no_request(db):
    with Executor(num_workers=2, timeout_s=60.0) as ex:
        slow = [Query(db, _SLOW_SQL.format(n=3_000_000 + i)) for i in range(2)]  # ~0.5 s each; both workers busy
        fast = [Query(db, f"SELECT {i}, count(*) FROM singer") for i in range(30)]
        ex.run(Query(db, "SELECT 1"))
        ex.run(Query(db, "SELECT 1"))  # both workers up
        pids = ex.worker_pids()
        out = {}
        thread = threading.Thread(target=lambda: out.update(results=ex.run_many(slow + fast)))
        thread.start()
        time.sleep(0.15)
        os.kill(pids[0], signal.SIGKILL)
        thread.join(120)
        results = out["results"]
        assert [r.rows for r in results[:2]] == [((3_000_000,),), ((3_000_001,),)]  # the killed query was retried
        assert [r.rows for r in results[2:]] == [((i, 6),) for i in range(30)]
        assert ex.stats["respawns"] >= 1 and pids[0] not in ex.worker_pids()


def test_bad_inputs():
    with pytest.raises(ValueError, match="num_workers"):
        Executor(num_workers=0)
    with Executor(num_workers=1) as ex:
        with pytest.raises(TypeError, match="item 0"):
            ex.run_many(["SELECT 1"])
        assert ex.run(Query("/nope.sqlite", None)).error_kind == "bad_request"
    with pytest.raises(RuntimeError, match="closed"):
        ex.run(Query("/nope.sqlite", "SELECT 1"))


def test_live_wal_database_is_read_fully(tmp_path, executor):
    # immutable=1 would ignore the un-checkpointed WAL; the sandbox drops it when a -wal file exists.
    path = str(tmp_path / "wal.sqlite")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1), (2)")
    conn.commit()
    assert os.path.exists(path + "-wal")
    assert executor.run(Query(path, "SELECT count(*) FROM t")).rows == ((2,),)
    conn.close()


def test_query_whose_worker_dies_twice_is_reported_not_retried_forever(db):
    with Executor(num_workers=1, timeout_s=60.0) as ex:
        ex.run(Query(db, "SELECT 1"))
        out = {}
        slow = Query(db, _SLOW_SQL.format(n=50_000_000))  # several seconds
        thread = threading.Thread(target=lambda: out.update(r=ex.run_many([slow, Query(db, "SELECT 7")])))
        thread.start()
        first = ex.worker_pids()[0]
        time.sleep(0.3)
        os.kill(first, signal.SIGKILL)
        while ex.worker_pids()[0] == first:  # the retry runs on a fresh worker: kill that one too
            time.sleep(0.01)
        second = ex.worker_pids()[0]
        while _cpu_s(second) < 0.3:  # started and well into the query (a worker killed before it starts is not a try)
            time.sleep(0.01)
        os.kill(second, signal.SIGKILL)
        thread.join(120)
        crash, after = out["r"]
        assert crash.error_kind == "worker_crash" and "-9" in crash.error_message
        assert after.ok and after.rows == ((7,),)
