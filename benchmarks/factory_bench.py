"""Data factory throughput: verified examples/s per stage and end to end (default tiny_cpu factory config).

Stages on the six embedded DBs: DB build, SQL synthesis, question realization, rule checker (question -> SQL),
full verification (static + 2x execution + LIMIT tie probe + generation-as-check, Executor with 1 and 2 workers),
and the whole `run_factory` (+ TFDS build) as `agro-sql factory` runs it.

Run: python benchmarks/factory_bench.py [--candidates 1200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import pathlib
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from agro_jax.config import load_config  # noqa: E402
from agro_jax.sql.executor import Executor  # noqa: E402
from data_factory.checker import RuleChecker  # noqa: E402
from data_factory.databases import DOMAINS, build_databases  # noqa: E402
from data_factory.pipeline import run_factory, write_outputs  # noqa: E402
from data_factory.synth_question import RuleQuestionGenerator  # noqa: E402
from data_factory.synth_sql import DbContext, synthesize  # noqa: E402
from data_factory.verify import Verifier  # noqa: E402


def _timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--candidates", type=int, default=1200)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(10**6))
        t, paths = _timed(lambda: build_databases(f"{tmp}/dbs{next(counter)}", DOMAINS, seed=0), a.repeats)
        rows.append(("build 6 databases", t, len(DOMAINS), "DBs"))
        contexts = {n: DbContext(p) for n, p in paths.items()}
        per_db = a.candidates // len(contexts)
        synth = lambda: [c for ctx in contexts.values() for c in synthesize(ctx, per_db, random.Random(0))]
        t, cands = _timed(synth, a.repeats)
        rows.append(("SQL synthesis", t, len(cands), "candidates"))
        gen = RuleQuestionGenerator(0)
        t, qs = _timed(lambda: gen.generate(cands, contexts, 0), a.repeats)
        rows.append(("question realization", t, len(cands), "questions"))
        t, _ = _timed(lambda: RuleChecker().to_sql(qs, [contexts[c.db_id] for c in cands]), a.repeats)
        rows.append(("rule checker (question -> SQL, cold regexes)", t, len(cands), "questions"))
        for workers in (1, 2):
            with Executor(num_workers=workers) as ex:
                v = Verifier(ex, RuleChecker(), gen, contexts, max_check_cycles=3)

                def verify(v=v):
                    fresh = [type(c)(**{**vars(c), "question": ""}) for c in cands]
                    return v.verify(fresh)

                t, (acc, _) = _timed(verify, a.repeats)
            rows.append((f"verify, executor {workers} worker(s)", t, len(acc), f"verified of {len(cands)}"))
        cfg = load_config("configs/tiny_cpu.py", [])
        times, summary = [], None
        for i in range(a.repeats):
            t0 = time.perf_counter()
            with Executor.from_config(cfg.executor) as ex:
                records, summary = run_factory(cfg.factory, ex, f"{tmp}/run{i}", seed=0, log=lambda *_: None)
            write_outputs(records, summary, f"{tmp}/run{i}")
            times.append(time.perf_counter() - t0)
        rows.append(("agro-sql factory (default config, + TFDS)", statistics.median(times), summary["verified"],
                     f"verified ({summary['num_examples']} selected)"))  # fmt: skip
    print(f"candidates={len(cands)}, repeats={a.repeats} (median)\n")
    print("| stage | seconds | items | items/s |")
    print("|---|---:|---:|---:|")
    for name, t, n, unit in rows:
        print(f"| {name} | {t:.2f} | {n} {unit} | {n / t:.0f} |")


if __name__ == "__main__":
    main()
