"""The data factory loop: databases -> rounds of (synthesize -> realize -> verify -> dedup) -> mix sampling -> split
-> examples.jsonl + summary.{json,md} + TFDS dataset.

    agro-sql factory --config configs/tiny_cpu.py [--num-examples N] [--rounds R] [--out DIR]

Output (<config.workdir>/factory/ unless --out):
    databases/<db_id>/<db_id>.sqlite   the embedded domain DBs (seeded); config.factory.extra_databases (globs)
                                       adds any other SQLite DBs, used in place
    examples.jsonl                     the selected examples (both splits, `split` field)
    summary.json, summary.md           counts, rejection reasons, histograms, skeleton stats, timings
    tfds/agro_sql/1.0.0/               the TFDS ArrayRecord dataset (splits train/test) -> config.data.data_dir

Rounds: each round sizes its per-template weights by how far each difficulty bucket is below its target (times
`oversample`) and boosts templates whose candidates were hard in the previous round (rejected by the check, or
needing more than one check cycle), so later rounds re-synthesize exactly the under-filled and hard cases.
"""

from __future__ import annotations

import collections
import glob
import json
import math
import os
import random
import time

from tqdm import tqdm

from data_factory import diversity
from data_factory.checker import RuleChecker
from data_factory.databases import build_databases
from data_factory.synth_question import RuleQuestionGenerator
from data_factory.synth_sql import LEVELS, DbContext, synthesize
from data_factory.templates import TEMPLATES
from data_factory.tfds_builder import FIELDS, build_dataset
from data_factory.verify import Verifier

_BATCH = 100  # candidates per verification batch (one progress-bar tick)


def _get(cfg, key, default):
    return cfg[key] if key in cfg else default


def _weights(pool, target_counts, oversample, hard_rate):
    have = collections.Counter(c.difficulty for c in pool)
    deficit = {lv: max(0.0, math.ceil(target_counts.get(lv, 0) * oversample) - have[lv]) for lv in LEVELS}
    if not any(deficit.values()):
        return None
    per_level = collections.Counter(t.level for t in TEMPLATES)
    return {
        t.name: deficit[t.level] / per_level[t.level] * (1.0 + hard_rate.get(t.name, 0.0)) + 1e-3 for t in TEMPLATES
    }


def to_record(c, schema_text: str, split: str) -> dict:
    rec = dict(
        question=c.question, sql=c.sql, db_id=c.db_id, db_path=os.path.abspath(c.db_path), schema_text=schema_text,
        difficulty=c.difficulty, skeleton=c.skeleton, evidence=c.evidence, source=c.source, split=split,
    )  # fmt: skip
    return {k: str(rec[k]) for k in FIELDS}


def run_factory(fcfg, executor, out_dir: str, seed: int = 0, question_generator=None, checker=None, log=print):
    """Runs the factory with config.factory `fcfg` and an open Executor; returns (records, summary)."""
    from agro_jax.sql.schema import render_schema

    t_start = time.perf_counter()
    paths = build_databases(os.path.join(out_dir, "databases"), tuple(_get(fcfg, "databases", ())), seed)
    for pattern in _get(fcfg, "extra_databases", ()):  # any SQLite files (e.g. Spider/BIRD train DBs)
        for path in sorted(glob.glob(pattern)):
            paths.setdefault(os.path.splitext(os.path.basename(path))[0], path)
    if not paths:
        raise ValueError("config.factory.databases and extra_databases select no database")
    contexts = {name: DbContext(path) for name, path in paths.items()}
    names = tuple(contexts)
    qgen = question_generator or RuleQuestionGenerator(seed)
    verifier = Verifier(
        executor, checker or RuleChecker(), qgen, contexts,
        max_check_cycles=int(_get(fcfg, "max_check_cycles", 3)), max_rows=int(_get(fcfg, "max_result_rows", 200)),
    )  # fmt: skip
    mix, n_target = dict(fcfg.target_mix), int(fcfg.num_examples)
    targets = diversity.target_counts(mix, n_target)
    rng = random.Random(seed)
    pool, reasons, rounds, hard_rate = [], collections.Counter(), [], {}
    for r in range(int(fcfg.rounds)):
        weights = _weights(pool, targets, float(_get(fcfg, "oversample", 1.3)), hard_rate)
        if weights is None:
            log(f"[factory] round {r}: every difficulty bucket is full; stopping early")
            break
        per_db = max(1, int(fcfg.candidates_per_round) // len(contexts))
        cands = [c for name in names for c in synthesize(contexts[name], per_db, rng, weights)]
        known = {(c.db_id, c.sql) for c in pool}
        fresh = [c for c in cands if (c.db_id, c.sql) not in known]
        fresh, _ = diversity.dedup(fresh, max_per_query=10**9)  # exact duplicates inside the round
        accepted, round_reasons = [], collections.Counter()
        for i in tqdm(range(0, len(fresh), _BATCH), desc=f"factory round {r + 1}/{fcfg.rounds}", unit="batch"):
            acc, counts = verifier.verify(fresh[i : i + _BATCH])
            accepted += acc
            round_reasons.update(counts)
        # Hard cases: rejected by the generation-as-check or accepted only after regeneration.
        acc_ids = {id(c) for c in accepted}
        hard, total = collections.Counter(), collections.Counter(c.template for c in fresh)
        for c in fresh:
            if (id(c) in acc_ids and c.cycles > 1) or (id(c) not in acc_ids and c.cycles >= 1):
                hard[c.template] += 1
        hard_rate = {t: hard[t] / total[t] for t in total}
        before = len(pool)
        pool, dropped = diversity.dedup(pool + accepted, int(_get(fcfg, "max_per_query", 1)))
        reasons.update(round_reasons)
        reasons["duplicate"] += dropped + (len(cands) - len(fresh))
        rounds.append(dict(round=r + 1, candidates=len(cands), verified=len(accepted), new_in_pool=len(pool) - before,
                           rejected=dict(round_reasons), pool_histogram=diversity.histogram(pool)))  # fmt: skip
        log(f"[factory] round {r + 1}: {len(cands)} candidates, {len(accepted)} verified, pool {len(pool)}")
    selected = diversity.sample_mix(pool, mix, n_target, seed)
    train, test = diversity.split_heldout(
        selected, float(fcfg.heldout_fraction), str(_get(fcfg, "heldout_by", "skeleton")), seed
    )
    compact, n_samples = bool(_get(fcfg, "schema_compact", True)), int(_get(fcfg, "schema_sample_values", 3))
    schema_text = {n: render_schema(ctx.schema, n_samples, compact=compact) for n, ctx in contexts.items()}
    records = [to_record(c, schema_text[c.db_id], s) for s, part in (("train", train), ("test", test)) for c in part]
    summary = dict(
        num_examples=len(records), target_examples=n_target, splits={"train": len(train), "test": len(test)},
        heldout_by=str(_get(fcfg, "heldout_by", "skeleton")), rounds=rounds,
        candidates=sum(x["candidates"] for x in rounds), verified=sum(x["verified"] for x in rounds),
        pool=len(pool), rejection_reasons=dict(reasons.most_common()),
        difficulty_histogram=diversity.histogram(selected), pool_difficulty_histogram=diversity.histogram(pool),
        target_mix=mix, mix_error=round(diversity.mix_error(selected, mix), 4),
        split_histograms={"train": diversity.histogram(train), "test": diversity.histogram(test)},
        template_histogram=diversity.histogram(selected, lambda c: c.template),
        db_histogram=diversity.histogram(selected, lambda c: c.db_id),
        check_cycles_histogram=diversity.histogram(selected, lambda c: str(c.cycles)),
        **diversity.skeleton_stats(selected, pool),
        leaked_test_skeletons=len({c.skeleton for c in test} & {c.skeleton for c in train}),
        seconds=round(time.perf_counter() - t_start, 2),
    )  # fmt: skip
    return records, summary


def summary_markdown(s: dict) -> str:
    lines = [
        "# Data factory summary",
        "",
        f"- examples: {s['num_examples']} (target {s['target_examples']}), "
        f"train {s['splits']['train']}, test {s['splits']['test']} (held out by {s['heldout_by']})",
        f"- candidates {s['candidates']}, verified {s['verified']}, pool after dedup {s['pool']}",
        f"- distinct skeletons {s['distinct_skeletons']} (ratio {s['distinct_skeleton_ratio']}), skeleton "
        f"coverage {s['skeleton_coverage']} of {s['pool_distinct_skeletons']}; mix error {s['mix_error']}",
        f"- time {s['seconds']} s",
        "",
        "| difficulty | selected | target | pool |",
        "|---|---|---|---|",
    ]
    total = sum(s["target_mix"].values())
    for lv in LEVELS:
        tgt, sel, pool = s["target_mix"].get(lv, 0) / total, s["difficulty_histogram"], s["pool_difficulty_histogram"]
        lines.append(f"| {lv} | {sel.get(lv, 0)} | {tgt:.0%} | {pool.get(lv, 0)} |")
    lines += ["", "| rejection reason | count |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in s["rejection_reasons"].items()]
    lines += ["", "| round | candidates | verified | new in pool |", "|---|---|---|---|"]
    lines += [f"| {x['round']} | {x['candidates']} | {x['verified']} | {x['new_in_pool']} |" for x in s["rounds"]]
    return "\n".join(lines) + "\n"


def write_outputs(records: list[dict], summary: dict, out_dir: str, build_tfds: bool = True) -> str | None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "examples.jsonl"), "w") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(summary_markdown(summary))
    return build_dataset(records, os.path.join(out_dir, "tfds")) if build_tfds else None


def factory_arguments(p) -> None:
    p.add_argument("--out", default=None, help="output dir (default <workdir>/factory)")
    p.add_argument("--num-examples", type=int, default=None, help="examples to select (default config.factory)")
    p.add_argument("--rounds", type=int, default=None, help="synthesis rounds (default config.factory)")
    p.add_argument("--no-tfds", action="store_true", help="skip the TFDS build (examples.jsonl + summary only)")
    p.epilog = "example:\n  agro-sql factory --config configs/tiny_cpu.py --workdir runs/tiny_cpu --num-examples 200"


def factory_main(config, args) -> int:
    """`agro-sql factory`: builds the dataset under <workdir>/factory (or --out)."""
    from agro_jax.sql.executor import Executor

    a = args
    fcfg = config.factory
    if a.num_examples is not None:
        fcfg.num_examples = a.num_examples
    if a.rounds is not None:
        fcfg.rounds = a.rounds
    if str(_get(fcfg, "question_generator", "rules")) != "rules":
        raise SystemExit(
            "config.factory.question_generator='model' needs a generate_fn: from Python, pass "
            "question_generator=ModelQuestionGenerator(fn) (and checker=ModelChecker(fn)) to run_factory"
        )
    out = a.out or os.path.join(str(config.workdir), "factory")
    with Executor.from_config(config.executor) as ex:
        records, summary = run_factory(fcfg, ex, out, seed=int(config.seed))
    path = write_outputs(records, summary, out, build_tfds=not a.no_tfds)
    print(summary_markdown(summary))
    print(f"[factory] wrote {out}/examples.jsonl, summary.json, summary.md" + (f"; TFDS at {path}" if path else ""))
    print(f"[factory] train with --config.data.data_dir={os.path.join(out, 'tfds')}")
    return 0
