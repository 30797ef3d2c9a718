"""The executor's cache of gold results: least-recently-used, bounded in bytes (the workers' estimate of the rows'
Python heap size plus a fixed cost per entry), keyed by the database file's identity as well as its path, so a changed
file is never answered from it. Results are frozen, so a hit hands out the stored object itself."""

from __future__ import annotations

import collections
import os

_ENTRY_OVERHEAD = 512  # bytes per entry beyond its rows (Result, key, OrderedDict node)


def file_stamp(path: str):
    """Identity of a database file's contents as far as stat can tell (None: unreadable/missing): mtime, size, inode,
    device, and the same of its -wal file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    try:
        wal = os.stat(path + "-wal")
        wal = (wal.st_mtime_ns, wal.st_size, wal.st_ino)
    except OSError:
        wal = None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev, wal)


class ResultCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: collections.OrderedDict = collections.OrderedDict()  # key -> (Result, bytes)
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(db_path: str, sql: str, max_rows: int) -> tuple:
        """db_path absolute (the executor's request); the stamp is taken now, before the query runs."""
        return (db_path, file_stamp(db_path), sql, max_rows)

    def get(self, key):
        hit = self._entries.get(key)
        if hit is None:
            return None
        self._entries.move_to_end(key)
        return hit[0]

    def put(self, key, result, nbytes: int) -> None:
        size = nbytes + len(key[2]) + _ENTRY_OVERHEAD
        if size > self.max_bytes or key in self._entries:
            return
        self._entries[key] = (result, size)
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            self.nbytes -= self._entries.popitem(last=False)[1][1]
