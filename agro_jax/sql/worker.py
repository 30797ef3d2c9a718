"""The sandboxed SQLite side of the executor pool: runs inside a spawned worker process (stdlib imports only).

Layers, outermost last (any one of them stops a hostile query; the parent's kill-and-respawn is the final one):
  1. statement gate: only SELECT / WITH / VALUES / PRAGMA may start a query (after comments, parens); one statement.
  2. read-only URI connection (`mode=ro`, plus `immutable=1` for files nobody writes while we read them).
  3. authorizer: allows reads, function calls (not load_extension) and recursive CTEs; denies every write,
     CREATE (temp included), ATTACH/DETACH, transactions and PRAGMAs except a few schema-reading ones.
  4. limits: SQLITE_LIMIT_LENGTH (caps zeroblob/replace/group_concat bombs), SQL length, 0 attached DBs,
     `PRAGMA hard_heap_limit` (process-wide SQLite heap), a progress-handler deadline per query,
     row cap (-> truncated=True) and cell/result byte caps (-> error "too_large").
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
import traceback

_ALLOWED_PRAGMAS = {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list"}
_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE}
_DENIED_FUNCTIONS = {"load_extension", "writefile", "readfile", "edit", "fts3_tokenizer"}
_LEAD_RE = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?(?:\*/|\Z)|\()*", re.S)
_FIRST_WORD_RE = re.compile(r"[A-Za-z]+")
_STARTERS = {"select", "with", "values", "pragma"}  # PRAGMA: only schema-reading ones pass the authorizer
_MAX_SQL_CHARS = 100_000
_LENGTH_LIMIT = 8 * 1024 * 1024  # largest string/blob any expression may build


def _authorizer(action, arg1, arg2, dbname, source):
    del dbname, source
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION:
        return sqlite3.SQLITE_DENY if (arg2 or "").lower() in _DENIED_FUNCTIONS else sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in _ALLOWED_PRAGMAS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def gate(sql: str) -> str | None:
    """Returns why `sql` may not run, or None. Cheap text checks before SQLite sees it."""
    if not sql or not sql.strip():
        return "syntax:empty query"
    if len(sql) > _MAX_SQL_CHARS:
        return f"too_large:query is {len(sql)} chars (limit {_MAX_SQL_CHARS})"
    rest = sql[_LEAD_RE.match(sql).end() :]
    word = _FIRST_WORD_RE.match(rest)
    if word is None:
        return "syntax:query does not start with a keyword"
    if word.group(0).lower() not in _STARTERS:
        return f"denied:only SELECT/WITH/VALUES (or read-only PRAGMA) queries may run, got {word.group(0).upper()}"
    return None


def classify(exc: BaseException) -> str:
    msg = str(exc).lower()
    if isinstance(exc, (UnicodeError,)):
        return "encoding"
    if isinstance(exc, MemoryError) or any(
        k in msg for k in ("out of memory", "too big", "too many", "too large", "too complex", "stack overflow")
    ):
        return "too_large"
    if "interrupted" in msg:
        return "timeout"
    if "not authorized" in msg or "prohibited" in msg or "readonly" in msg or "one statement" in msg:
        return "denied"
    if "syntax error" in msg or "incomplete input" in msg or "unrecognized token" in msg:
        return "syntax"
    if "unable to open" in msg or "file is not a database" in msg:
        return "db_error"
    return "runtime"


class Sandbox:
    """Cached read-only connections for one worker process; `execute` never raises."""

    def __init__(self, max_cell_bytes: int, heap_limit_bytes: int, max_result_bytes: int, immutable: bool):
        self.max_cell_bytes = max_cell_bytes
        self.max_result_bytes = max_result_bytes
        self.immutable = immutable
        self.heap_limit_bytes = heap_limit_bytes
        self._conns: dict[str, tuple[tuple, sqlite3.Connection]] = {}
        self._deadline = float("inf")

    def _progress(self):
        return 1 if time.monotonic() > self._deadline else 0

    def _connect(self, db_path: str) -> sqlite3.Connection:
        st = os.stat(db_path)  # raises FileNotFoundError -> db_error; keeps SQLite from creating anything
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._conns.get(db_path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        if cached is not None:
            cached[1].close()
        # immutable=1 skips locking and change detection; never for a DB with a live WAL (its data would be missed).
        immutable = self.immutable and not os.path.exists(db_path + "-wal")
        uri = "file:" + _quote(os.path.abspath(db_path)) + "?mode=ro" + ("&immutable=1" if immutable else "")
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        conn.text_factory = lambda b: b.decode("utf-8", "replace")  # non-UTF-8 text never raises
        conn.execute(f"PRAGMA hard_heap_limit={int(self.heap_limit_bytes)}")
        conn.execute("PRAGMA temp_store=MEMORY")  # big sorts/temp b-trees hit the heap limit instead of filling /tmp
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, _LENGTH_LIMIT)
        conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, _MAX_SQL_CHARS * 4)
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, 2000)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 1000)
        conn.setlimit(sqlite3.SQLITE_LIMIT_TRIGGER_DEPTH, 1)
        conn.set_authorizer(_authorizer)
        conn.set_progress_handler(self._progress, 1000)
        self._conns[db_path] = (stamp, conn)
        return conn

    def execute(self, db_path: str, sql: str, timeout_s: float, max_rows: int) -> dict:
        t0 = time.monotonic()
        out = {"rows": [], "columns": [], "error_kind": None, "error_message": "", "truncated": False}
        why = gate(sql)
        if why is not None:
            out["error_kind"], out["error_message"] = why.split(":", 1)
        else:
            try:
                self._execute(out, db_path, sql, t0 + timeout_s, max_rows)
            except BaseException as e:  # noqa: BLE001 -- the worker must survive any query
                out["rows"], out["columns"] = [], []
                out["error_kind"] = "db_error" if isinstance(e, FileNotFoundError) else classify(e)
                out["error_message"] = f"{type(e).__name__}: {e}"[:500]
                if out["error_kind"] == "runtime" and not isinstance(e, sqlite3.Error):
                    out["error_message"] += "\n" + traceback.format_exc(limit=3)[-800:]
            finally:
                self._deadline = float("inf")
        out["elapsed_s"] = time.monotonic() - t0
        return out

    def _execute(self, out, db_path, sql, deadline, max_rows):
        conn = self._connect(db_path)
        self._deadline = deadline
        cur = conn.execute(sql)
        out["columns"] = [d[0] for d in cur.description or ()]
        rows, total = [], 0
        while len(rows) <= max_rows:
            chunk = cur.fetchmany(min(256, max_rows + 1 - len(rows)))
            if not chunk:
                break
            for row in chunk:
                for v in row:
                    n = len(v) if isinstance(v, (str, bytes)) else 8
                    if n > self.max_cell_bytes:
                        raise _TooLarge(f"a result cell has {n} bytes (max_cell_bytes={self.max_cell_bytes})")
                    total += n
                if total > self.max_result_bytes:
                    raise _TooLarge(f"result exceeds {self.max_result_bytes} bytes")
            rows.extend(chunk)
        cur.close()
        if len(rows) > max_rows:
            rows, out["truncated"] = rows[:max_rows], True
        out["rows"] = rows

    def close(self):
        for _, conn in self._conns.values():
            conn.close()
        self._conns.clear()


class _TooLarge(Exception):
    def __str__(self):
        return "too big: " + super().__str__()


def _quote(path: str) -> str:
    return path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def worker_main(conn, sandbox_kwargs: dict):
    """Process entry: serve (db_path, sql, timeout_s, max_rows) requests on `conn` until None or EOF."""
    sandbox = Sandbox(**sandbox_kwargs)
    while True:
        try:
            req = conn.recv()
        except (EOFError, OSError):
            break
        if req is None:
            break
        tag, db_path, sql, timeout_s, max_rows = req
        conn.send((tag, sandbox.execute(db_path, sql, timeout_s, max_rows)))
    sandbox.close()
