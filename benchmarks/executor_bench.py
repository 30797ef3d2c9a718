"""Executor throughput on Spider dev gold queries vs the BIRD evaluator's approach.

Each "comparison" executes the predicted SQL (here: the gold SQL itself) and the gold SQL on the example's DB and
compares results, i.e. 2 queries. Baseline = a re-implementation of DAMO-ConvAI bird/llm/src/evaluation.py:
multiprocessing.Pool(num_cpus).apply_async per example, `func_timeout(meta_time_out, execute_sql, ...)` (a thread per
call, killed by an async exception on timeout), and a fresh `sqlite3.connect(db_path)` per call.
Ours = Executor.run_many (persistent sandboxed workers, cached read-only connections); without and with the gold cache.

Run: python benchmarks/executor_bench.py [--spider DIR] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import ctypes
import multiprocessing as mp
import os
import pathlib
import sqlite3
import statistics
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from agro_jax.sql.benchmark_data import load_spider  # noqa: E402
from agro_jax.sql.compare import compare  # noqa: E402
from agro_jax.sql.executor import Executor, Query  # noqa: E402


class _Timeout(Exception):
    pass


def _func_timeout(timeout_s, fn, args):
    """func_timeout's mechanism: run fn in a thread; on timeout raise an exception inside it and give up."""
    box = {}

    def target():
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident), ctypes.py_object(_Timeout))
        raise _Timeout()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _bird_execute_sql(predicted_sql, ground_truth, db_path):
    conn = sqlite3.connect(db_path)
    cursor = conn.cursor()
    cursor.execute(predicted_sql)
    predicted_res = cursor.fetchall()
    cursor.execute(ground_truth)
    ground_truth_res = cursor.fetchall()
    return 1 if set(predicted_res) == set(ground_truth_res) else 0


def _bird_execute_model(predicted_sql, ground_truth, db_place, idx, meta_time_out):
    try:
        res = _func_timeout(meta_time_out, _bird_execute_sql, (predicted_sql, ground_truth, db_place))
    except _Timeout:
        res = 0
    except Exception:  # noqa: BLE001 -- BIRD scores any error as 0
        res = 0
    return {"sql_idx": idx, "res": res}


def run_bird_baseline(examples, workers, timeout_s=30.0):
    results = []
    pool = mp.get_context("fork").Pool(processes=workers)
    for i, ex in enumerate(examples):
        pool.apply_async(
            _bird_execute_model, args=(ex["sql"], ex["sql"], ex["db_path"], i, timeout_s), callback=results.append
        )
    pool.close()
    pool.join()
    return sum(r["res"] for r in results)


def run_executor(ex, examples, use_cache):
    preds = ex.run_many([Query(e["db_path"], e["sql"]) for e in examples])
    golds = ex.run_many([Query(e["db_path"], e["sql"]) for e in examples], use_cache=use_cache)
    return sum(compare(p, g, "bird") for p, g in zip(preds, golds))


def main():
    default = pathlib.Path(__file__).resolve().parents[2] / "shared/benchmarks/spider"
    p = argparse.ArgumentParser()
    p.add_argument("--spider", default=str(default))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    examples = load_spider(a.spider, schema_text=False)
    n_q = 2 * len(examples)
    rows = []

    def timed(name, fn, expect):
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            got = fn()
            times.append(time.perf_counter() - t0)
            assert got == expect, f"{name}: {got} matches, expected {expect}"
        med = statistics.median(times)
        rows.append((name, med, n_q / med))

    timed(
        "BIRD evaluator approach (Pool + func_timeout + fresh conn)",
        lambda: run_bird_baseline(examples, a.workers),
        len(examples),
    )
    t0 = time.perf_counter()
    with Executor(num_workers=a.workers, timeout_s=30.0, max_rows=100000) as ex:
        ex.run_many([Query(e["db_path"], "SELECT 1") for e in examples[: 4 * a.workers]])
        startup = time.perf_counter() - t0
        timed("agro_jax Executor.run_many (no cache)", lambda: run_executor(ex, examples, False), len(examples))
        run_executor(ex, examples, True)  # fill the gold cache
        timed("agro_jax Executor.run_many (gold cache warm)", lambda: run_executor(ex, examples, True), len(examples))
    base = rows[0][1]
    print(
        f"\nSpider dev: {len(examples)} examples ({n_q} query executions per pass), {a.workers} workers, "
        f"median of {a.repeats}; executor startup {startup:.2f}s; cpus={os.cpu_count()}\n"
    )
    print("| approach | seconds / pass | queries/s | speedup |")
    print("|---|---:|---:|---:|")
    for name, sec, qps in rows:
        print(f"| {name} | {sec:.2f} | {qps:.0f} | {base / sec:.2f}x |")


if __name__ == "__main__":
    main()
