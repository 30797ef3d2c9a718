"""Executor resources: limits validated at construction, frozen results, a gold cache bounded in bytes and keyed by
file identity, a bounded per-worker connection LRU (fds and SQLite heap released), and flat memory over 20k queries
with large results."""

import dataclasses
import math
import os
import pathlib
import shutil
import sqlite3
import time

import pytest

from agro_jax.sql.executor import Executor, Query, Result

MiB = 1024 * 1024


def _status(pid, field):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture(scope="module")
def db(spider_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("memory") / "concert_singer.sqlite"
    shutil.copy(spider_dir / "database/concert_singer/concert_singer.sqlite", path)
    return str(path)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout_s": math.nan},
        {"timeout_s": math.inf},
        {"timeout_s": 1e300},
        {"timeout_s": 0},
        {"timeout_s": -1},
        {"max_rows": -1},
        {"max_rows": 0},
        {"max_rows": 2.5},
        {"num_workers": 0},
        {"num_workers": True},
        {"kill_grace_s": math.nan},
        {"max_result_bytes": -5},
        {"cache_max_bytes": -1},
        {"max_connections": 0},
        {"start_method": "thread"},
    ],
    ids=repr,
)
def test_bad_limits_raise_at_construction(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        Executor(**kwargs)


def test_results_are_frozen_and_shared_safely(db):
    with Executor(num_workers=1) as ex:
        a = ex.run(Query(db, "SELECT Singer_ID, Name FROM singer ORDER BY 1"), use_cache=True)
        b = ex.run(Query(db, "SELECT Singer_ID, Name FROM singer ORDER BY 1"), use_cache=True)
    assert a is b and ex.stats["cache_hits"] == 1  # the cache hands out one object: nothing in it can change
    assert type(a.rows) is tuple and all(type(r) is tuple for r in a.rows) and type(a.columns) is tuple
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.rows = ()
    with pytest.raises(AttributeError):
        a.rows.append((7, "x"))
    assert Result([[1, 2]], ["a"], None, "", 0.0, False).rows == ((1, 2),)  # lists given are converted


def test_gold_cache_is_bounded_in_bytes(db):
    """Each result: 400 rows x (int + 200-char str) ~ 140 KB of Python heap; 2 MB of cache holds ~14 of them."""
    sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 400) "
    sql += "SELECT x, hex(zeroblob(100)) || {} FROM c"
    with Executor(num_workers=2, cache_max_bytes=2 * MiB) as ex:
        for k in range(60):
            assert ex.run(Query(db, sql.format(k)), use_cache=True).rows[-1][0] == 400
            assert ex.cache_bytes <= 2 * MiB
        assert 10 <= len(ex._cache) <= 20 and ex.cache_bytes > 1.5 * MiB
        hits = ex.stats["cache_hits"]
        ex.run(Query(db, sql.format(59)), use_cache=True)  # recent: still there
        ex.run(Query(db, sql.format(0)), use_cache=True)  # evicted long ago
        assert ex.stats["cache_hits"] == hits + 1
        # one batch repeating a gold query (G samples of one prompt) runs it once
        ex.run_many([Query(db, "SELECT 41")] * 8, use_cache=True)
        assert ex.stats["deduplicated"] == 7


def _make_db(path, value):
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (?)", (value,))
    conn.close()


def test_gold_cache_notices_a_changed_file(tmp_path):
    """Keyed by (mtime, size, inode, device): a rewrite with the same size and mtime but a new inode is noticed."""
    path = str(tmp_path / "g.sqlite")
    _make_db(path, 111)
    q = Query(path, "SELECT x FROM t")
    with Executor(num_workers=1) as ex:
        assert ex.run(q, use_cache=True).rows == ((111,),)
        st = os.stat(path)
        _make_db(tmp_path / "new.sqlite", 222)  # same size: same schema, one int of the same width
        os.utime(tmp_path / "new.sqlite", ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp_path / "new.sqlite", path)
        assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns
        assert ex.run(q, use_cache=True).rows == ((222,),)
        time.sleep(0.01)
        with sqlite3.connect(path) as conn:  # in place: mtime and size change
            conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(500)])
        conn.close()
        assert ex.run(Query(path, "SELECT count(*) FROM t"), use_cache=True).rows == ((501,),)
        assert ex.stats["cache_hits"] == 0


def test_worker_connection_lru_releases_fds_and_heap(tmp_path):
    """24 databases of ~1 MB each scanned in full by one worker with an 8 MB SQLite heap: with every connection
    kept open (the old behaviour) their page caches spend the heap: the 8th database failed with MemoryError and the
    worker held 16 fds; with an LRU of 4 it holds at most 4 database fds and every query answers."""
    src = tmp_path / "src.sqlite"
    with sqlite3.connect(src) as conn:
        conn.execute("CREATE TABLE t (b)")
        conn.executemany("INSERT INTO t VALUES (randomblob(1000))", [()] * 1000)
    conn.close()
    paths = []
    for i in range(24):
        paths.append(str(tmp_path / f"db{i}.sqlite"))
        shutil.copy(src, paths[-1])
    with Executor(num_workers=1, heap_limit_bytes=8 * MiB, max_connections=4) as ex:
        ex.run(Query(paths[0], "SELECT 1"))
        pid = ex.worker_pids()[0]
        base = _fds(pid) - 1
        for _ in range(2):
            for p in paths:
                r = ex.run(Query(p, "SELECT count(*), sum(length(b)) FROM t"))
                assert r.rows == ((1000, 1_000_000),), (p, r.error_kind, r.error_message)
                assert _fds(pid) <= base + 4
        assert ex.worker_pids() == [pid]


def test_memory_stays_flat_over_20k_queries_with_large_results(db):
    """20k queries in batches of 200: results of 50-150 KB (heap estimate), every 10th query a result rejected
    as too large after accumulating up to the 2 MB budget, every 25th 300 cells of 8 MB (the old worker fetched 256
    of them before checking: 1978 MB peak RSS, now 34 MB), half the batches through a 16 MB gold cache.

    Measured (2-core CPU, load average 9): parent RSS +6 MB over its warmed-up level, worker peak RSS 33 MB, 29 s.
    Bounds: parent + 100 MB (one batch of results ~30 MB, its pickles, the 16 MB cache), workers < 120 MB.
    """
    sizes = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < {n}) "
    big = sizes + "SELECT x, hex(randomblob(64)) || '{k}' FROM c"
    over = sizes.format(n=5000) + "SELECT x, randomblob(60000) FROM c"
    cells = sizes.format(n=300) + "SELECT zeroblob(8000000) FROM c"

    def batch(b):
        qs = []
        for j in range(200):
            k = b * 200 + j
            sql = over if j % 10 == 3 else cells if j % 25 == 7 else big.format(n=150 + k % 350, k=k % 97)
            qs.append(Query(db, sql))
        return qs

    with Executor(num_workers=2, max_result_bytes=2 * MiB, cache_max_bytes=16 * MiB, max_rows=1000) as ex:
        t0 = time.monotonic()
        ex.run_many(batch(0), use_cache=True)
        ex.run_many(batch(1))
        base, peak, kinds = _status(os.getpid(), "VmRSS"), 0, set()
        for b in range(2, 100):
            results = ex.run_many(batch(b), use_cache=b % 2 == 0)
            kinds |= {r.error_kind for r in results}
            assert sum(r.ok for r in results) == 200 - 20 - 8
            peak = max(peak, _status(os.getpid(), "VmRSS"))
            del results
        workers = [_status(p, "VmHWM") for p in ex.worker_pids()]
        wall = time.monotonic() - t0
    print(f"parent +{(peak - base) / MiB:.0f} MB, workers {[w // MiB for w in workers]} MB, {wall:.0f}s")
    assert kinds == {None, "too_large"}
    assert ex.stats["respawns"] == 0 and ex.cache_bytes <= 16 * MiB
    assert peak - base < 100 * MiB, f"parent grew {(peak - base) / MiB:.0f} MB"
    assert max(workers) < 120 * MiB, f"worker peak {max(workers) / MiB:.0f} MB"
