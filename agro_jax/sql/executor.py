"""A pool of sandboxed SQLite worker processes: the one place SQL from models (or gold files) gets executed.

    with Executor(num_workers=2, timeout_s=5.0) as ex:
        results = ex.run_many([Query(db_path, "SELECT 1"), ...])   # in order; never raises for a bad query
        gold = ex.run_many(gold_queries, use_cache=True)  # cached by (db file identity, sql, max_rows)

Workers are started with the `spawn` context (jax may be initialised in the parent; never fork after that) and run
`agro_jax.sql.worker.Sandbox` (read-only LRU-cached connections, authorizer, limits, deadline; see there). Workers
ignore SIGINT and exit when the parent dies (parent-death signal + watchdog). A query stops at timeout_s of wall time
or after timeout_s * vm_steps_per_s SQLite VM steps, whichever comes first: the step limit is the same on a loaded
machine, so results (and the model's observations) do not depend on load unless the machine runs < vm_steps_per_s.
The parent keeps its own deadline per request (timeout_s * 1.5 + kill_grace_s): a worker that overruns it is
SIGKILLed and respawned and its request gets error_kind "timeout" with the real wall time; a worker that dies (crash,
OOM kill, external SIGKILL) is respawned and its in-flight request is retried once on a fresh worker, then reported as
"worker_crash". Other requests are never lost: each worker holds exactly one request, the rest wait in the parent's
queue. A query whose worker died before starting is sent again as it was; after _MAX_CRASHES_IN_A_ROW such deaths
with no worker starting in between the batch stops: finished results are returned, the rest are "worker_crash".
close() (from any thread) stops a running batch: its unfinished queries become "cancelled" errors and no worker
outlives close(). A fresh worker says "ready" first: a query's clocks start then, not at the (slow, when loaded) spawn.

Results are frozen (rows: tuple of tuples, columns: tuple), so the gold cache (agro_jax/sql/result_cache.py: bounded
in bytes, keyed by the database file's identity) can hand out the same object; a changed file is never answered from it.
db paths are made absolute once, in the parent (workers may have started in another working directory).
Memory: the parent holds one batch's results (at most len(batch) * max_result_bytes) plus cache_max_bytes.

error_kind values: None (ok), "syntax", "timeout", "denied", "too_large", "runtime", "encoding", "db_error",
"worker_crash", "cancelled" (close() during the batch), "bad_request" (a Query field of the wrong type or range).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import wait

from agro_jax.sql.result_cache import ResultCache
from agro_jax.sql.worker import scrub, worker_main

_MAX_CRASHES_IN_A_ROW = 8  # workers dying before they start, none starting in between: the pool is unusable
_NO_CACHE_KINDS = {"timeout", "worker_crash", "cancelled", "bad_request"}  # may pass on a retry / never ran
_MAX_TIMEOUT_S = 86_400.0
_MAX_ROWS = 100_000_000
_STARTUP_S = 120.0  # allowance for a fresh worker to start (interpreter + imports) before its query's clock runs
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Query:
    db_path: str
    sql: str
    timeout_s: float | None = None
    max_rows: int | None = None


@dataclasses.dataclass(frozen=True)
class Result:
    """Immutable: rows is a tuple of row tuples, columns a tuple (lists given to the constructor are converted)."""

    rows: tuple
    columns: tuple
    error_kind: str | None
    error_message: str
    elapsed_s: float
    truncated: bool

    def __post_init__(self):
        if type(self.rows) is not tuple or any(type(r) is not tuple for r in self.rows):
            object.__setattr__(self, "rows", tuple(tuple(r) for r in self.rows))
        if type(self.columns) is not tuple:
            object.__setattr__(self, "columns", tuple(self.columns))

    @property
    def ok(self) -> bool:
        return self.error_kind is None

    @classmethod
    def error(cls, kind: str, message: str, elapsed_s: float = 0.0) -> Result:
        return cls((), (), kind, message, elapsed_s, False)


def _number_error(name: str, v, *, integer: bool, lo: float, hi: float) -> str | None:
    """Why `v` is not a valid `name` (a finite int/float in [lo, hi]), or None."""
    want = f"an int in [{int(lo)}, {int(hi)}]" if integer else f"a finite number in [{lo:g}, {hi:g}]"
    if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
        return f"{name} must be {want}, got {type(v).__name__} {v!r}"
    if not (math.isfinite(v) and lo <= v <= hi):
        return f"{name} must be {want}, got {v!r}"
    return None


def _check(name: str, v, **kw):
    why = _number_error(name, v, **kw)
    if why is not None:
        raise ValueError(f"Executor {why}")
    return v


class _Worker:
    def __init__(self, ctx, sandbox_kwargs, parent):
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=worker_main, args=(child, sandbox_kwargs, parent), daemon=True)
        self.proc.start()
        child.close()  # so a dead worker shows up as EOF on our end
        self.task = None  # (index, request, attempt, sent_at, deadline)
        self.ready = False  # the worker says so once started: until then its deadline allows for the startup

    def kill(self):
        if self.proc.is_alive():
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.join(5)
        self.conn.close()


class Executor:
    """Process pool executing read-only SQLite queries with per-query limits. Context manager; see module doc."""

    def __init__(
        self,
        num_workers: int = 2,
        timeout_s: float = 5.0,
        max_rows: int = 10000,
        max_cell_bytes: int = 65536,
        heap_limit_bytes: int = 256 * 1024 * 1024,
        max_result_bytes: int = 16 * 1024 * 1024,
        immutable: bool = True,
        start_method: str = "spawn",
        kill_grace_s: float = 2.0,
        max_connections: int = 8,
        cache_max_bytes: int = 256 * 1024 * 1024,
        vm_steps_per_s: int = 20_000_000,
    ):
        self._closed = True  # until fully built (close() from __del__ must not touch missing state)
        _check("num_workers", num_workers, integer=True, lo=1, hi=1024)
        self.timeout_s = float(_check("timeout_s", timeout_s, integer=False, lo=1e-3, hi=_MAX_TIMEOUT_S))
        self.max_rows = _check("max_rows", max_rows, integer=True, lo=1, hi=_MAX_ROWS)
        # The parent kills a worker at timeout_s * 1.5 + kill_grace_s; the in-worker deadline normally fires first.
        self.kill_grace_s = float(_check("kill_grace_s", kill_grace_s, integer=False, lo=0, hi=_MAX_TIMEOUT_S))
        self.cache_max_bytes = _check("cache_max_bytes", cache_max_bytes, integer=True, lo=0, hi=2**50)
        self._sandbox_kwargs = dict(
            max_cell_bytes=_check("max_cell_bytes", max_cell_bytes, integer=True, lo=1, hi=2**40),
            heap_limit_bytes=_check("heap_limit_bytes", heap_limit_bytes, integer=True, lo=2**20, hi=2**50),
            max_result_bytes=_check("max_result_bytes", max_result_bytes, integer=True, lo=1, hi=2**50),
            immutable=bool(immutable),
            max_connections=_check("max_connections", max_connections, integer=True, lo=1, hi=10_000),
            # timeout_s * this = the query's work limit in SQLite VM steps (0: wall clock only). 20M/s is about half
            # of what this 2-core CPU runs (~44M/s): the work limit, which does not depend on load, normally fires
            # before the wall clock, so whether a query "times out" is the same from run to run.
            vm_steps_per_s=_check("vm_steps_per_s", vm_steps_per_s, integer=True, lo=0, hi=10**12),
        )
        if start_method not in multiprocessing.get_all_start_methods():
            raise ValueError(f"Executor start_method must be one of {multiprocessing.get_all_start_methods()}")
        self._ctx = multiprocessing.get_context(start_method)
        self._direct_children = start_method != "forkserver"
        self._lock = threading.RLock()  # one batch at a time; re-entrant so close() from a signal handler works
        self._cache = ResultCache(self.cache_max_bytes)
        self.stats = collections.Counter()  # respawns, kills, cache_hits, queries, deduplicated
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)  # close() wakes a running batch
        self._closed = False
        self._workers = [self._spawn() for _ in range(num_workers)]

    @classmethod
    def from_config(cls, cfg) -> Executor:
        """Builds from config.executor (num_workers, timeout_s, max_rows, max_cell_bytes, heap_limit_bytes, ...)."""
        fields = ("num_workers", "timeout_s", "max_rows", "max_cell_bytes", "heap_limit_bytes", "max_result_bytes")
        extra = ("immutable", "start_method", "kill_grace_s", "max_connections", "cache_max_bytes", "vm_steps_per_s")
        return cls(**{k: cfg[k] for k in fields + extra if k in cfg})

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def cache_bytes(self) -> int:
        return self._cache.nbytes

    def worker_pids(self) -> list[int]:
        """Current worker process ids (they change when a worker is respawned)."""
        return [w.proc.pid for w in self._workers]

    def run(self, query: Query, use_cache: bool = False) -> Result:
        return self.run_many([query], use_cache=use_cache)[0]

    def run_many(self, queries: list[Query], use_cache: bool = False) -> list[Result]:
        """Executes `queries` across the pool; results in input order. `use_cache` for gold queries."""
        with self._lock:
            if self._closed:
                raise RuntimeError("Executor is closed")
            results: list[Result | None] = [None] * len(queries)
            todo, keys, first = collections.deque(), {}, {}
            for i, q in enumerate(queries):
                if not isinstance(q, Query):
                    raise TypeError(f"run_many expects Query objects, item {i} is {type(q).__name__}")
                req = self._request(q)
                if isinstance(req, Result):
                    results[i] = req
                    continue
                if use_cache:
                    keys[i] = key = ResultCache.key(req[0], req[1], req[3])
                    hit = self._cache.get(key)
                    if hit is not None:
                        results[i] = hit
                        self.stats["cache_hits"] += 1
                        continue
                    if key in first:  # same gold query twice in one batch (G samples of a prompt): run it once
                        self.stats["deduplicated"] += 1
                        continue
                    first[key] = i
                todo.append((i, req, 0))
            try:
                nbytes = self._drain(todo, results)
            except BaseException:
                if self._closed:  # close() from a signal handler or another thread mid-batch
                    return self._cancel(results)
                for w in self._workers:  # interrupted: leave no worker holding a stale request
                    if w.task is not None:
                        self._respawn(w)
                raise
            if use_cache:
                for i, key in keys.items():
                    if results[i] is None:
                        results[i] = results[first[key]]
                    elif i in nbytes and results[i].error_kind not in _NO_CACHE_KINDS:
                        self._cache.put(key, results[i], nbytes[i])
            return self._cancel(results) if self._closed else results

    def _request(self, q: Query):
        """-> (abs db_path, sql, timeout_s, max_rows) for the worker, or an error Result for a malformed Query."""
        db_path = q.db_path
        if isinstance(db_path, os.PathLike):
            db_path = os.fspath(db_path)
        if not isinstance(db_path, str) or not db_path:
            return Result.error("bad_request", f"db_path must be a non-empty str path, got {type(db_path).__name__}")
        if not isinstance(q.sql, str):
            return Result.error("bad_request", f"sql must be a str, got {type(q.sql).__name__}")
        t = self.timeout_s if q.timeout_s is None else q.timeout_s
        why = _number_error("timeout_s", t, integer=False, lo=1e-3, hi=_MAX_TIMEOUT_S)
        n = self.max_rows if q.max_rows is None else q.max_rows
        why = why or _number_error("max_rows", n, integer=True, lo=1, hi=_MAX_ROWS)
        if why is not None:
            return Result.error("bad_request", f"query {why}")
        return (os.path.abspath(db_path), q.sql, float(t), int(n))

    def _cancel(self, results):
        msg = "executor closed before this query finished"
        return [r if r is not None else Result.error("cancelled", msg) for r in results]

    def _drain(self, todo, results) -> dict:
        """Runs `todo` to completion; fills `results`; -> {index: nbytes} for the results the workers answered."""
        nbytes, crashes = {}, 0
        while (todo or any(w.task for w in self._workers)) and not self._closed:
            for w in self._workers:
                if w.task is None and todo:
                    self._send(w, *todo.popleft())
            busy = [w for w in self._workers if w.task is not None]
            if not busy:
                continue
            timeout = max(0.0, min(w.task[4] for w in busy) - time.monotonic())
            ready = set(wait([w.conn for w in busy] + [self._wake_r], timeout=timeout))
            for w in busy:
                if w.task is None:  # given up on (see _give_up) earlier in this loop
                    continue
                i, req, attempt, sent_at, deadline = w.task
                if w.conn in ready:
                    try:
                        tag, out = w.conn.recv()
                        if tag == "ready":  # started: the query's clock starts now, not at spawn (slow when loaded)
                            w.ready, now, crashes = True, time.monotonic(), 0
                            w.task = (i, req, attempt, now, now + req[2] * 1.5 + self.kill_grace_s)
                            continue
                        if tag != i:
                            raise ConnectionError(f"answer for request {tag} while waiting for {i}")
                    except (EOFError, OSError, ConnectionError):  # the worker died mid-query
                        w.proc.join(1)
                        exitcode, started = w.proc.exitcode, w.ready
                        self._respawn(w)
                        if not started:  # the query never ran; workers that cannot start make the pool unusable
                            crashes += 1
                            todo.appendleft((i, req, attempt))
                        elif attempt == 0:
                            todo.appendleft((i, req, 1))
                        else:
                            msg = f"worker died twice running this query (exit code {exitcode})"
                            results[i] = Result.error("worker_crash", msg, time.monotonic() - sent_at)
                        if crashes > _MAX_CRASHES_IN_A_ROW:
                            self._give_up(todo, results, crashes)
                        continue
                    w.task = None
                    results[i] = Result(
                        tuple(out["rows"]),
                        tuple(out["columns"]),
                        out["error_kind"],
                        scrub(out["error_message"]),
                        out["elapsed_s"],
                        out["truncated"],
                    )
                    nbytes[i] = out["nbytes"]
                elif time.monotonic() > deadline:  # hung in an uninterruptible call: kill it
                    self.stats["kills"] += 1
                    self._respawn(w)
                    # The message (a model observation) stays free of timing; elapsed_s has the real wall time.
                    msg = f"worker killed: the query ran past its {req[2]:g}s limit in one uninterruptible call"
                    results[i] = Result.error("timeout", msg, time.monotonic() - sent_at)
        return nbytes

    def _give_up(self, todo, results, crashes):
        msg = (
            f"executor workers died {crashes} times in a row before starting (run scripts from a "
            "file with an `if __name__ == '__main__'` guard)"
        )
        log.warning("%s; %d queries of this batch reported as worker_crash", msg, len(todo))
        for w in self._workers:
            if w.task is not None:
                todo.append(w.task[:3])
                self._respawn(w)
        while todo:
            results[todo.popleft()[0]] = Result.error("worker_crash", msg)

    def _send(self, w: _Worker, i: int, req: tuple, attempt: int):
        now = time.monotonic()
        startup = 0.0 if w.ready else _STARTUP_S
        w.task = (i, req, attempt, now, now + startup + req[2] * 1.5 + self.kill_grace_s)
        self.stats["queries"] += 1
        msg = (i,) + req
        try:
            w.conn.send(msg)
        except (BrokenPipeError, OSError):  # died while idle: replace it and send again
            self._respawn(w)
            w.task = (i, req, attempt, now, now + _STARTUP_S + req[2] * 1.5 + self.kill_grace_s)
            w.conn.send(msg)

    def _spawn(self) -> _Worker:
        # PR_SET_PDEATHSIG fires when the spawning *thread* exits: only ask for it from the main thread.
        main = threading.current_thread() is threading.main_thread()
        return _Worker(self._ctx, self._sandbox_kwargs, (os.getpid(), self._direct_children, main))

    def _respawn(self, w: _Worker):
        w.kill()
        w.task = None
        if self._closed:
            return
        self.stats["respawns"] += 1
        fresh = self._spawn()
        w.conn, w.proc, w.ready = fresh.conn, fresh.proc, False

    def close(self):
        """Stops the pool: a batch running in another thread returns (unfinished queries "cancelled"); no worker
        outlives this call."""
        if self._closed:
            return
        self._closed = True
        try:
            self._wake_w.send_bytes(b"x")
        except OSError:
            pass
        got = self._lock.acquire(timeout=60)  # the running batch notices within one wait()
        try:
            for w in self._workers:
                try:
                    w.conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
            for w in self._workers:
                w.proc.join(1)
                w.kill()
            self._wake_r.close()
            self._wake_w.close()
        finally:
            if got:
                self._lock.release()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- interpreter shutdown
            pass
