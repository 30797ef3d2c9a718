"""The embedded domain databases: six small SQLite DBs generated from a seed (no downloads).

Each domain is a list of tables in FK (DAG) order: parents are filled first and children draw their foreign keys from
the parents' keys with skewed (Zipf-like) weights, so group sizes differ and aggregates are informative. Columns use
varied distributions (normal, log-normal, skewed categories, dates over years) and no column is constant, so a wrong
query rarely returns the gold result by accident (the paper's DAG-ordered DB augmentation, in spirit).

    paths = build_databases("runs/x/factory/databases", ("university", "retail"), seed=0)
    # {"university": ".../university/university.sqlite", ...}  (Spider layout: <dir>/<db_id>/<db_id>.sqlite)

Same seed -> byte-identical files (rows are inserted in a fixed order into a fresh file).
"""

from __future__ import annotations

import difflib
import os
import sqlite3
import zlib

from agro_jax.errors import UsageError
from data_factory.dbgen import Rand, Table
from data_factory.domains import BUILDERS

DOMAINS = tuple(BUILDERS)
_VERSION = 2  # bump when the generators change (invalidates cached files)


def domain_tables(name: str, seed: int) -> list[Table]:
    if name not in BUILDERS:
        close = difflib.get_close_matches(name, DOMAINS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UsageError(f"unknown database domain {name!r}; {hint}known: {', '.join(DOMAINS)} (other SQLite files: "
                         "config.factory.extra_databases globs)")  # fmt: skip
    return BUILDERS[name](Rand(seed * 1_000_003 + zlib.crc32(name.encode())))


def _ddl(t: Table) -> str:
    parts = [f"{c} {typ}" for c, typ in t.columns]
    if t.primary_key:
        parts.append(f"PRIMARY KEY ({', '.join(t.primary_key)})")
    parts += [f"FOREIGN KEY ({c}) REFERENCES {rt}({rc})" for c, rt, rc in t.foreign_keys]
    return f"CREATE TABLE {t.name} (\n  " + ",\n  ".join(parts) + "\n)"


def write_database(path: str, tables: list[Table]) -> None:
    """Creates `path` from scratch (tables in the given FK order) with FK enforcement on while inserting."""
    tmp = path + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    conn = sqlite3.connect(tmp)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        for t in tables:
            conn.execute(_ddl(t))
            conn.executemany(f"INSERT INTO {t.name} VALUES ({', '.join('?' * len(t.columns))})", t.rows)
        conn.commit()
        bad = conn.execute("PRAGMA foreign_key_check").fetchall()
        if bad:
            raise ValueError(f"{path}: foreign key violations {bad[:3]}")
    finally:
        conn.close()
    os.replace(tmp, path)


def build_databases(out_dir: str, names=DOMAINS, seed: int = 0) -> dict[str, str]:
    """Builds (or reuses, when built with the same seed and version) each named domain DB. Returns {db_id: path}."""
    paths = {}
    for name in names:
        if name not in BUILDERS:
            domain_tables(name, seed)  # the error, before any folder is made
        db_dir = os.path.join(out_dir, name)
        os.makedirs(db_dir, exist_ok=True)
        path, stamp_path = os.path.join(db_dir, f"{name}.sqlite"), os.path.join(db_dir, "BUILD_STAMP")
        stamp = f"seed={seed} version={_VERSION}"
        fresh = os.path.isfile(path) and os.path.isfile(stamp_path) and open(stamp_path).read() == stamp
        if not fresh:
            write_database(path, domain_tables(name, seed))
            with open(stamp_path, "w") as f:
                f.write(stamp)
        paths[name] = path
    return paths
