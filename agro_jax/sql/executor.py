"""A pool of sandboxed SQLite worker processes: the one place SQL from models (or gold files) gets executed.

    with Executor(num_workers=2, timeout_s=5.0) as ex:
        results = ex.run_many([Query(db_path, "SELECT 1"), ...])   # in order; never raises for a bad query
        gold = ex.run_many(gold_queries, use_cache=True)  # cached by (db_path, sql, max_rows)

Workers are started with the `spawn` context (jax may be initialised in the parent; never fork after that) and run
`agro_jax.sql.worker.Sandbox` (read-only cached connections, authorizer, limits, progress-handler deadline; see there).
The parent keeps its own deadline per request (timeout_s + grace): a worker that overruns it is SIGKILLed and
respawned and its request gets error_kind "timeout"; a worker that dies (crash, OOM kill, external SIGKILL) is
respawned and its in-flight request is retried once on a fresh worker, then reported as "worker_crash". Other
requests are never lost: each worker holds exactly one request, the rest wait in the parent's queue.

error_kind values: None (ok), "syntax", "timeout", "denied", "too_large", "runtime", "encoding", "db_error",
"worker_crash".
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import wait

from agro_jax.sql.worker import worker_main

_CACHE_MAX = 200_000
_MAX_CRASHES_IN_A_ROW = 8  # with no answer in between: the pool itself is unusable
_NO_CACHE_KINDS = {"timeout", "worker_crash"}  # may pass on a retry; everything else is deterministic


@dataclasses.dataclass(frozen=True)
class Query:
    db_path: str
    sql: str
    timeout_s: float | None = None
    max_rows: int | None = None


@dataclasses.dataclass
class Result:
    rows: list[tuple]
    columns: list[str]
    error_kind: str | None
    error_message: str
    elapsed_s: float
    truncated: bool

    @property
    def ok(self) -> bool:
        return self.error_kind is None

    @classmethod
    def error(cls, kind: str, message: str, elapsed_s: float = 0.0) -> Result:
        return cls([], [], kind, message, elapsed_s, False)


class _Worker:
    def __init__(self, ctx, sandbox_kwargs):
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=worker_main, args=(child, sandbox_kwargs), daemon=True)
        self.proc.start()
        child.close()  # so a dead worker shows up as EOF on our end
        self.task = None  # (index, query, deadline, attempt)

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
        max_result_bytes: int = 64 * 1024 * 1024,
        immutable: bool = True,
        start_method: str = "spawn",
        kill_grace_s: float = 2.0,
    ):
        if num_workers < 1:
            raise ValueError(f"Executor num_workers must be >= 1, got {num_workers}")
        if timeout_s <= 0:
            raise ValueError(f"Executor timeout_s must be > 0, got {timeout_s}")
        self.timeout_s, self.max_rows = float(timeout_s), int(max_rows)
        # The parent kills a worker at timeout_s * 1.5 + kill_grace_s; the in-worker deadline normally fires first.
        self.kill_grace_s = float(kill_grace_s)
        self._sandbox_kwargs = dict(
            max_cell_bytes=int(max_cell_bytes),
            heap_limit_bytes=int(heap_limit_bytes),
            max_result_bytes=int(max_result_bytes),
            immutable=bool(immutable),
        )
        self._ctx = multiprocessing.get_context(start_method)
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self.stats = collections.Counter()  # respawns, kills, cache_hits, queries
        self._workers = [_Worker(self._ctx, self._sandbox_kwargs) for _ in range(num_workers)]
        self._closed = False
        self._crashes_in_a_row = 0

    @classmethod
    def from_config(cls, cfg) -> Executor:
        """Builds from config.executor (num_workers, timeout_s, max_rows, max_cell_bytes, heap_limit_bytes, ...)."""
        fields = ("num_workers", "timeout_s", "max_rows", "max_cell_bytes", "heap_limit_bytes", "max_result_bytes")
        kwargs = {k: cfg[k] for k in fields + ("immutable", "start_method", "kill_grace_s") if k in cfg}
        return cls(**kwargs)

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc):
        self.close()

    def worker_pids(self) -> list[int]:
        """Current worker process ids (they change when a worker is respawned)."""
        return [w.proc.pid for w in self._workers]

    def run(self, query: Query, use_cache: bool = False) -> Result:
        return self.run_many([query], use_cache=use_cache)[0]

    def run_many(self, queries: list[Query], use_cache: bool = False) -> list[Result]:
        """Executes `queries` across the pool; results in input order. `use_cache` for gold queries."""
        if self._closed:
            raise RuntimeError("Executor is closed")
        with self._lock:  # one batch at a time; the cache is shared state too
            results: list[Result | None] = [None] * len(queries)
            todo = collections.deque()
            for i, q in enumerate(queries):
                if not isinstance(q, Query):
                    raise TypeError(f"run_many expects Query objects, item {i} is {type(q).__name__}")
                if not isinstance(q.sql, str) or not isinstance(q.db_path, str):
                    results[i] = Result.error("syntax", f"query {i}: sql and db_path must be str, got {type(q.sql)}")
                    continue
                key = self._key(q)
                if use_cache and key in self._cache:
                    self._cache.move_to_end(key)
                    results[i] = self._cache[key]
                    self.stats["cache_hits"] += 1
                else:
                    todo.append((i, q, 0))
            try:
                self._drain(todo, results)
            except BaseException:  # interrupted or unusable: leave no worker holding a stale request
                for w in self._workers:
                    if w.task is not None:
                        self._respawn(w)
                raise
            if use_cache:
                for i, q in enumerate(queries):
                    if results[i].error_kind not in _NO_CACHE_KINDS:
                        self._cache[self._key(q)] = results[i]
                while len(self._cache) > _CACHE_MAX:
                    self._cache.popitem(last=False)
            return results

    def _key(self, q: Query):
        return (q.db_path, q.sql, q.max_rows or self.max_rows)

    def _drain(self, todo, results):
        while todo or any(w.task for w in self._workers):
            for w in self._workers:
                if w.task is None and todo:
                    self._send(w, *todo.popleft())
            busy = [w for w in self._workers if w.task is not None]
            now = time.monotonic()
            timeout = max(0.0, min(w.task[2] for w in busy) - now)
            ready = set(wait([w.conn for w in busy], timeout=timeout))
            for w in busy:
                i, q, deadline, attempt = w.task
                if w.conn in ready:
                    try:
                        _, out = w.conn.recv()
                    except (EOFError, OSError, ConnectionError):  # the worker died mid-query
                        w.proc.join(1)
                        exitcode = w.proc.exitcode
                        self._respawn(w)
                        self._crashes_in_a_row += 1
                        if self._crashes_in_a_row > _MAX_CRASHES_IN_A_ROW:
                            raise RuntimeError(
                                f"executor workers died {self._crashes_in_a_row} times in a row without answering "
                                "(cannot start? run scripts from a file with an `if __name__ == '__main__'` guard)"
                            ) from None
                        if attempt == 0:
                            todo.appendleft((i, q, 1))
                        else:
                            msg = f"worker died twice running this query (exit code {exitcode})"
                            results[i] = Result.error("worker_crash", msg)
                        continue
                    w.task = None
                    self._crashes_in_a_row = 0
                    results[i] = Result(
                        [tuple(r) for r in out["rows"]],
                        out["columns"],
                        out["error_kind"],
                        out["error_message"],
                        out["elapsed_s"],
                        out["truncated"],
                    )
                elif time.monotonic() > deadline:  # hung in an uninterruptible call: kill it
                    self.stats["kills"] += 1
                    self._respawn(w)
                    t = self._timeout(q)
                    results[i] = Result.error("timeout", f"worker killed after {t:.1f}s (+grace)", t)

    def _timeout(self, q: Query) -> float:
        return float(q.timeout_s or self.timeout_s)

    def _send(self, w: _Worker, i: int, q: Query, attempt: int):
        t = self._timeout(q)
        deadline = time.monotonic() + t * 1.5 + self.kill_grace_s
        w.task = (i, q, deadline, attempt)
        self.stats["queries"] += 1
        msg = (i, q.db_path, q.sql, t, int(q.max_rows or self.max_rows))
        try:
            w.conn.send(msg)
        except (BrokenPipeError, OSError):  # died while idle: replace it and send again
            self._respawn(w)
            w.task = (i, q, deadline, attempt)
            w.conn.send(msg)

    def _respawn(self, w: _Worker):
        self.stats["respawns"] += 1
        w.kill()
        fresh = _Worker(self._ctx, self._sandbox_kwargs)
        w.conn, w.proc, w.task = fresh.conn, fresh.proc, None

    def close(self):
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            try:
                w.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for w in self._workers:
            w.proc.join(2)
            w.kill()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- interpreter shutdown
            pass
