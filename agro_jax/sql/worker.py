"""The sandboxed SQLite side of the executor pool: runs inside a spawned worker process (stdlib imports only).

Layers, outermost last (any one of them stops a hostile query; the parent's kill-and-respawn is the final one):
  1. statement gate: only SELECT / WITH / VALUES / PRAGMA may start a query (after comments, parens); one statement.
  2. read-only URI connection (`mode=ro`, plus `immutable=1` for files nobody writes while we read them) to a regular
     file with an SQLite header (directories, FIFOs, truncated or foreign files are db errors before SQLite opens them).
  3. authorizer: allows reads, function calls (not load_extension) and recursive CTEs; denies every write,
     CREATE (temp included), ATTACH/DETACH, transactions and PRAGMAs except a few schema-reading ones.
     Table-valued functions (json_each, json_tree, pragma_table_info, ...) are opened once per connection before the
     authorizer is installed: SQLite asks it for a write to sqlite_master when it first declares such a table.
  4. limits: SQLITE_LIMIT_LENGTH (caps zeroblob/replace/group_concat bombs; printf/format, which SQLite lets run past
     it and then returns NULL, are checked for their output size first), SQL length, 0 attached DBs,
     `PRAGMA hard_heap_limit` (process-wide SQLite heap), a progress-handler deadline per query (and a check after the
     last row, for single calls that overran it) plus a work limit of timeout_s * vm_steps_per_s VM instructions, which
     stops a runaway query at the same point however loaded the machine is (the wall clock only when it is slower),
     row cap (-> truncated=True) and cell/result byte caps (-> error "too_large") applied row by row while fetching,
     so a rejected result never accumulates past them.
Connections are cached per worker in a small LRU (closed on eviction: file descriptors and page caches released).
The worker ignores SIGINT (Ctrl-C reaches the parent, which decides) and exits when its parent dies
(PR_SET_PDEATHSIG where the parent's spawning thread is the main one, plus a watchdog thread polling the parent).
Error messages carry no host paths or tracebacks: they become model observations.
"""

from __future__ import annotations

import collections
import ctypes
import os
import re
import signal
import sqlite3
import stat
import sys
import threading
import time

_ALLOWED_PRAGMAS = {
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
}
_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE}
_DENIED_FUNCTIONS = {"load_extension", "writefile", "readfile", "edit", "fts3_tokenizer"}
# Opened once per connection so SQLite declares them before the authorizer exists (see module doc).
_WARM_TVFS = ("json_each('[]')", "json_tree('[]')") + tuple(f"pragma_{p}('sqlite_master')" for p in _ALLOWED_PRAGMAS)
_LEAD_RE = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?(?:\*/|\Z)|\()*", re.S)
_FIRST_WORD_RE = re.compile(r"[A-Za-z]+")
_STARTERS = {"select", "with", "values", "pragma"}  # PRAGMA: only schema-reading ones pass the authorizer
_MAX_SQL_CHARS = 100_000
_LENGTH_LIMIT = 8 * 1024 * 1024  # largest string/blob any expression may build
_PRINTF_SPEC_RE = re.compile(r"%([-+ #!0,]*)(\*|\d+)?(?:\.(\*|\d*))?(?:ll|l)?(.?)", re.S)
_PATH_RE = re.compile(r"(?<![\w.~])(?:[A-Za-z]:)?[/\\](?:[^\s'\"/\\:]+[/\\])+([^\s'\"/\\:]*)")
_HEADER = b"SQLite format 3\x00"
_WATCHDOG_S = 0.2
_TICK = 1000  # VM instructions between progress-handler calls


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
    if isinstance(exc, UnicodeError):
        return "encoding"
    if any(k in msg for k in ("malformed", "not a database", "disk i/o error", "unable to open", "corrupt")):
        return "db_error"
    if isinstance(exc, MemoryError) or any(
        k in msg for k in ("out of memory", "too big", "too many", "too large", "too complex", "stack overflow")
    ):
        return "too_large"
    if "interrupted" in msg:
        return "timeout"
    if any(k in msg for k in ("not authorized", "prohibited", "readonly", "one statement", "may not be modified")):
        return "denied"
    if any(k in msg for k in ("syntax error", "incomplete input", "unrecognized token", "null character")):
        return "syntax"
    return "runtime"


def scrub(message: str) -> str:
    """Drops directories from any path in `message` (observations must not show host paths)."""
    return _PATH_RE.sub(r"\1", message)


def row_nbytes(row: tuple) -> int:
    """Approximate Python heap bytes of one result row (tuple + list slot + cells); what the byte budgets count."""
    n = 64 + 8 * len(row)
    for v in row:
        if v.__class__ is str or v.__class__ is bytes:
            n += sys.getsizeof(v)
        elif v is not None:
            n += 32
    return n


def printf_size(args: tuple) -> int:
    """Upper bound on the length of printf(*args): format text + every width/precision + string arguments (x2, %q)."""
    fmt = args[0] if args else None
    if fmt is None:
        return 0
    fmt = fmt.decode("utf-8", "replace") if isinstance(fmt, bytes) else str(fmt)  # SQLite reads any value as text
    rest, total = iter(args[1:]), len(fmt)

    def number(spec):
        if spec == "*":
            v = next(rest, 0)
            try:
                return abs(int(v))
            except (TypeError, ValueError, OverflowError):
                return 0
        return int(spec) if spec else 0

    for m in _PRINTF_SPEC_RE.finditer(fmt):
        total += number(m.group(2)) + number(m.group(3))
        if m.group(4) not in ("%", ""):
            v = next(rest, None)
            total += 2 * len(v) + 2 if isinstance(v, (str, bytes)) else 32
    return total


class _DbError(Exception):
    pass


class _Refused(Exception):
    """A check of ours failed: kind and message are ours, not SQLite's."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class Sandbox:
    """LRU-cached read-only connections for one worker process; `execute` never raises."""

    def __init__(
        self,
        max_cell_bytes: int,
        heap_limit_bytes: int,
        max_result_bytes: int,
        immutable: bool,
        max_connections: int = 8,
        vm_steps_per_s: int = 0,
    ):
        self.max_cell_bytes = max_cell_bytes
        self.max_result_bytes = max_result_bytes
        self.immutable = immutable
        self.heap_limit_bytes = heap_limit_bytes
        self.max_connections = max_connections
        self.vm_steps_per_s = vm_steps_per_s
        self._ticks, self._tick_budget, self._over_budget = 0, float("inf"), False
        self._conns: collections.OrderedDict[str, tuple[tuple, sqlite3.Connection]] = collections.OrderedDict()
        self._deadline = float("inf")
        self._func_error: _Refused | None = None
        self._aux = sqlite3.connect(":memory:", isolation_level=None)  # runs the real printf for the override
        self._aux.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, _LENGTH_LIMIT)

    def _progress(self):  # every _TICK VM instructions
        self._ticks += 1
        if self._ticks > self._tick_budget:
            self._over_budget = True
            return 1
        return 1 if time.monotonic() > self._deadline else 0

    def _printf(self, *args):
        n = printf_size(args)
        if n > _LENGTH_LIMIT:
            self._func_error = _Refused("too_large", f"printf/format output of up to {n} chars (limit {_LENGTH_LIMIT})")
            raise OverflowError("printf output too big")
        if not args:
            return None
        return self._aux.execute(f"SELECT printf({','.join('?' * len(args))})", args).fetchone()[0]

    def _check_file(self, db_path: str) -> tuple:
        try:
            st = os.stat(db_path)  # FileNotFoundError -> db_error; keeps SQLite from creating anything
        except FileNotFoundError:
            raise _DbError(f"database file not found: {os.path.basename(db_path)}") from None
        except OSError as e:
            raise _DbError(f"cannot open database {os.path.basename(db_path)}: {e.strerror}") from None
        name = os.path.basename(db_path)
        if stat.S_ISDIR(st.st_mode):
            raise _DbError(f"{name} is a directory, not a database file")
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or stream forever
            raise _DbError(f"{name} is not a regular file")
        if st.st_size:
            with open(db_path, "rb") as f:
                head = f.read(100)
            if not head.startswith(_HEADER):
                raise _DbError(f"{name} is not an SQLite database (bad header)")
            page = int.from_bytes(head[16:18], "big")
            page = 65536 if page == 1 else page
            pages, valid = int.from_bytes(head[28:32], "big"), head[24:28] == head[92:96]
            if valid and pages and st.st_size < page * pages and not os.path.exists(db_path + "-wal"):
                raise _DbError(f"{name} is truncated ({st.st_size} of {page * pages} bytes)")
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)

    def _connect(self, db_path: str) -> sqlite3.Connection:
        stamp = self._check_file(db_path)
        cached = self._conns.get(db_path)
        if cached is not None and cached[0] == stamp:
            self._conns.move_to_end(db_path)
            return cached[1]
        if cached is not None:
            del self._conns[db_path]
            cached[1].close()
        # immutable=1 skips locking and change detection; never for a DB with a live WAL (its data would be missed).
        immutable = self.immutable and not os.path.exists(db_path + "-wal")
        uri = "file:" + _quote(os.path.abspath(db_path)) + "?mode=ro" + ("&immutable=1" if immutable else "")
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, cached_statements=32)
        try:
            conn.text_factory = lambda b: b.decode("utf-8", "replace")  # non-UTF-8 text never raises
            conn.execute(f"PRAGMA hard_heap_limit={int(self.heap_limit_bytes)}")
            conn.execute("PRAGMA temp_store=MEMORY")  # big sorts/temp b-trees hit the heap limit instead of /tmp
            conn.execute("PRAGMA cache_size=-2000")  # 2 MB page cache per connection (the LRU bounds the count)
            for tvf in _WARM_TVFS:
                try:
                    conn.execute(f"SELECT * FROM {tvf}").fetchall()
                except sqlite3.Error:  # not compiled in: it stays unknown (or denied) for queries
                    pass
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, _LENGTH_LIMIT)
            conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, _MAX_SQL_CHARS * 4)
            conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
            conn.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, 2000)
            conn.setlimit(sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 1000)
            conn.setlimit(sqlite3.SQLITE_LIMIT_TRIGGER_DEPTH, 1)
            for name in ("printf", "format"):
                conn.create_function(name, -1, self._printf, deterministic=True)
            conn.set_authorizer(_authorizer)
            conn.set_progress_handler(self._progress, _TICK)
        except BaseException:
            conn.close()
            raise
        self._conns[db_path] = (stamp, conn)
        while len(self._conns) > self.max_connections:
            self._conns.popitem(last=False)[1][1].close()
        return conn

    def execute(self, db_path: str, sql: str, timeout_s: float, max_rows: int) -> dict:
        t0 = time.monotonic()
        out = {"rows": [], "columns": [], "error_kind": None, "error_message": "", "truncated": False, "nbytes": 0}
        why = gate(sql)
        if why is not None:
            out["error_kind"], out["error_message"] = why.split(":", 1)
        else:
            for attempt in (0, 1):
                try:
                    self._execute(out, db_path, sql, t0 + timeout_s, timeout_s, max_rows)
                    break
                except BaseException as e:  # noqa: BLE001 -- the worker must survive any query
                    self._fail(out, e)
                    # The heap limit is per process: other cached connections' page caches may have used it up.
                    if attempt == 0 and "out of memory" in str(e) and len(self._conns) > 1:
                        self.drop_connections()
                        continue
                    break
                finally:
                    self._deadline, self._func_error, self._tick_budget = float("inf"), None, float("inf")
        out["elapsed_s"] = time.monotonic() - t0
        return out

    def _fail(self, out: dict, e: BaseException):
        out["rows"], out["columns"], out["nbytes"], out["truncated"] = [], [], 0, False
        if self._func_error is not None:
            e = self._func_error
        if isinstance(e, _Refused):
            out["error_kind"], msg = e.kind, str(e)
        elif isinstance(e, _DbError):
            out["error_kind"], msg = "db_error", str(e)
        elif isinstance(e, sqlite3.Error):
            out["error_kind"], msg = classify(e), str(e)
        else:
            out["error_kind"], msg = classify(e), f"{type(e).__name__}: {e}"
        if out["error_kind"] == "timeout" and msg == "interrupted":
            msg = "query interrupted at its time limit"
            if self._over_budget:  # the same on a loaded machine: what the model sees does not depend on load
                msg = f"query interrupted after {self._tick_budget * _TICK:.3g} SQLite VM steps (its work limit)"
        out["error_message"] = scrub(msg)[:500]

    def _execute(self, out, db_path, sql, deadline, timeout_s, max_rows):
        conn = self._connect(db_path)
        self._deadline, self._ticks, self._over_budget = deadline, 0, False
        if self.vm_steps_per_s:
            self._tick_budget = timeout_s * self.vm_steps_per_s / _TICK
        cur = conn.execute(sql)
        try:
            columns = [d[0] for d in cur.description or ()]
            rows, truncated, cap, cell_cap = [], False, self.max_result_bytes, self.max_cell_bytes
            total = sum(sys.getsizeof(c) for c in columns)
            for row in cur:  # one row at a time: a rejected result never accumulates past the budgets
                if len(rows) >= max_rows:
                    truncated = True
                    break
                for v in row:
                    if (v.__class__ is str or v.__class__ is bytes) and len(v) > cell_cap:
                        raise _Refused("too_large", f"a result cell has {len(v)} bytes (max_cell_bytes={cell_cap})")
                total += row_nbytes(row)
                if total > cap:
                    raise _Refused("too_large", f"result exceeds {cap} bytes (after {len(rows)} rows)")
                rows.append(row)
        finally:
            cur.close()
        if time.monotonic() > deadline:  # one long uninterruptible call (the progress handler never ran)
            raise _Refused("timeout", f"query ran past its {timeout_s:g} s time limit")
        out.update(rows=rows, columns=columns, truncated=truncated, nbytes=total, error_kind=None, error_message="")

    def drop_connections(self):
        while self._conns:
            self._conns.popitem(last=False)[1][1].close()

    def close(self):
        self.drop_connections()
        self._aux.close()


def _quote(path: str) -> str:
    return path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def _parent_alive(parent_pid: int, direct_child: bool) -> bool:
    if direct_child:  # reparented (to init or a subreaper) once the parent is gone, even while it is a zombie
        return os.getppid() == parent_pid
    try:
        os.kill(parent_pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _die_with_parent(parent_pid: int, direct_child: bool, pdeathsig: bool):
    """PR_SET_PDEATHSIG (Linux; fires when the spawning *thread* exits, so only asked for when that thread is the
    parent's main thread) and a watchdog thread for every other case (blocked opens, other OSes, forkserver)."""
    if pdeathsig and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if not _parent_alive(parent_pid, direct_child):  # died before prctl took effect
        os._exit(0)

    def watch():
        while _parent_alive(parent_pid, direct_child):
            time.sleep(_WATCHDOG_S)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def worker_main(conn, sandbox_kwargs: dict, parent: tuple | None = None):
    """Process entry: say ("ready", pid), then serve (tag, db_path, sql, timeout_s, max_rows) requests on `conn`
    until None or EOF.

    parent: (pid, direct_child, pdeathsig) of the executor process, to exit when it dies.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent is not None:
        _die_with_parent(*parent)
    sandbox = Sandbox(**sandbox_kwargs)
    conn.send(("ready", os.getpid()))  # the parent starts a query's clock from here, not from the spawn
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
