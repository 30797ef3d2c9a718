"""The data factory loop: databases -> rounds of (synthesize -> realize -> verify -> dedup) -> mix sampling -> split
-> examples.jsonl + summary.{json,md} + TFDS dataset.

    agro-sql factory --config configs/tiny_cpu.py [--num-examples N] [--rounds R] [--out DIR]

Output (<config.workdir>/factory/ unless --out):
    databases/<db_id>/<db_id>.sqlite   the embedded domain DBs (seeded); config.factory.extra_databases (globs)
                                       adds any other SQLite DBs, used in place
    examples.jsonl                     the selected examples (both splits, `split` field)
    summary.json, summary.md           counts, rejection reasons, histograms, skeleton stats, timings, who wrote and
                                       who verified the examples, yield per check cycle, question diversity
    verification.jsonl                 every candidate that was verified: attempts (question, writer, judge flag,
                                       checker SQL, outcome), status, reason, verified_by, selected/split
    state/factory.json                 the round loop's state after each batch: a killed run resumes (--restart: not)
    tfds/agro_sql/1.0.0/               the TFDS ArrayRecord dataset (splits train/test) -> config.data.data_dir

Rounds (rounds.py) re-synthesize the under-filled and hard cases. The rule realizer + RuleChecker are the fast
default; `--config.factory.question_generator=model --config.factory.checker=model` puts the policy at
factory.model_path (HF dir or GGUF; "" = the real Qwen2.5-Coder-0.5B-Instruct) in the loop (model_loop.py).
"""

from __future__ import annotations

import collections
import glob
import json
import os
import time

from agro_jax.errors import UsageError
from data_factory import diversity
from data_factory.checker import RuleChecker
from data_factory.databases import build_databases
from data_factory.model_loop import components
from data_factory.question_stats import question_diversity
from data_factory.rounds import run_rounds
from data_factory.synth_question import RuleQuestionGenerator
from data_factory.synth_sql import LEVELS, DbContext
from data_factory.tfds_builder import FIELDS, build_dataset
from data_factory.verify import Verifier


def _get(cfg, key, default):
    return cfg[key] if key in cfg else default


def to_record(c, schema_text: str, split: str) -> dict:
    rec = dict(
        question=c.question, sql=c.sql, db_id=c.db_id, db_path=os.path.abspath(c.db_path), schema_text=schema_text,
        difficulty=c.difficulty, skeleton=c.skeleton, evidence=c.evidence, source=c.source, split=split,
    )  # fmt: skip
    return {k: str(rec[k]) for k in FIELDS}


def run_factory(fcfg, executor, out_dir: str, seed: int = 0, question_generator=None, checker=None, judge=None,
                log=print, restart: bool = False):  # fmt: skip
    """Runs the factory with config.factory `fcfg` and an open Executor; returns (records, summary). Components not
    given come from fcfg (model_loop.components: rules by default, the model when question_generator / checker /
    judge say so). Resumes from <out_dir>/state unless restart; writes <out_dir>/verification.jsonl."""
    from agro_jax.sql.schema import render_schema

    t_start = time.perf_counter()
    paths = build_databases(os.path.join(out_dir, "databases"), tuple(_get(fcfg, "databases", ())), seed)
    for pattern in _get(fcfg, "extra_databases", ()):  # any SQLite files (e.g. Spider/BIRD train DBs)
        found = sorted(glob.glob(os.path.expanduser(pattern)))
        if not found:
            raise UsageError(f"config.factory.extra_databases: {pattern!r} matches no file; give SQLite paths or "
                             "globs, e.g. '/data/spider/database/*/*.sqlite'")  # fmt: skip
        for path in found:
            paths.setdefault(os.path.splitext(os.path.basename(path))[0], path)
    if not paths:
        raise ValueError("config.factory.databases and extra_databases select no database")
    contexts = {name: DbContext(path) for name, path in paths.items()}
    policy = None
    if question_generator is None and checker is None and judge is None:
        question_generator, checker, judge, policy = components(fcfg, seed, log)
    qgen, checker = question_generator or RuleQuestionGenerator(seed), checker or RuleChecker()
    verifier = Verifier(
        executor, checker, qgen, contexts, judge=judge,
        max_check_cycles=int(_get(fcfg, "max_check_cycles", 3)), max_rows=int(_get(fcfg, "max_result_rows", 200)),
    )  # fmt: skip
    names = {k: getattr(v, "name", type(v).__name__) if v is not None else "none"
             for k, v in (("question_generator", qgen), ("checker", checker), ("judge", judge))}  # fmt: skip
    if policy is not None:
        names["model_path"] = str(_get(fcfg, "model_path", "")) or "real model"
    st = run_rounds(fcfg, contexts, verifier, seed, os.path.join(out_dir, "state", "factory.json"), names, log,
                    restart=restart)  # fmt: skip
    pool, reasons, rounds = st["pool"], collections.Counter(st["reasons"]), st["rounds"]
    mix, n_target = dict(fcfg.target_mix), int(fcfg.num_examples)
    selected = diversity.sample_mix(pool, mix, n_target, seed)
    # Optional second, harder held-out split of whole unseen skeletons ("test_skeleton"), taken out first.
    skel_frac = float(_get(fcfg, "skeleton_heldout_fraction", 0.0))
    rest, test_skel = diversity.split_heldout(selected, skel_frac, "skeleton", seed) if skel_frac else (selected, [])
    train, test = diversity.split_heldout(
        rest, float(fcfg.heldout_fraction), str(_get(fcfg, "heldout_by", "skeleton")), seed
    )
    if float(fcfg.heldout_fraction) > 0 and rest and not test:
        raise UsageError(
            f"factory: held out 0 of {len(rest)} examples by {_get(fcfg, 'heldout_by', 'skeleton')!r} (the literal "
            "split needs queries kept with several literal values): raise factory.num_examples or max_per_query, or "
            "set factory.heldout_by='skeleton'"
        )
    compact, n_samples = bool(_get(fcfg, "schema_compact", True)), int(_get(fcfg, "schema_sample_values", 3))
    schema_text = {n: render_schema(ctx.schema, n_samples, compact=compact) for n, ctx in contexts.items()}
    parts = (("train", train), ("test", test)) + ((("test_skeleton", test_skel),) if test_skel else ())
    records = [to_record(c, schema_text[c.db_id], s) for s, part in parts for c in part]
    train_queries = {diversity.query_key(c) for c in train}
    summary = dict(
        num_examples=len(records), target_examples=n_target, splits={s: len(part) for s, part in parts},
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
        test_queries_seen_in_train=sum(diversity.query_key(c) in train_queries for c in test),
        leaked_test_skeleton_skeletons=len({c.skeleton for c in test_skel} & {c.skeleton for c in rest}),
        seconds=round(time.perf_counter() - t_start, 2),
        **_verification_stats(st, parts, names, policy, out_dir),
    )  # fmt: skip
    return records, summary


def _verification_stats(st, parts, names, policy, out_dir) -> dict:
    """Who wrote and who verified the selected examples, yield per check cycle, question diversity, model use, run
    time over all (resumed) runs; writes the audit of every verified candidate to <out_dir>/verification.jsonl."""
    split_of = {(c.db_id, c.sql): s for s, part in parts for c in part}
    last_accept = {(a["db_id"], a["sql"]): a for a in st["audit"] if a["status"] == "accepted"}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "verification.jsonl"), "w") as f:
        for a in st["audit"]:
            key = (a["db_id"], a["sql"])
            selected = key in split_of and last_accept.get(key) is a
            f.write(json.dumps(dict(a, selected=selected, split=split_of[key] if selected else ""), default=str) + "\n")
    chosen = [last_accept[k] for k in split_of if k in last_accept]
    checked = [a for a in st["audit"] if a["attempts"]]  # passed the execution checks, reached the check cycles
    by_cycle = collections.Counter()
    for x in st["rounds"]:
        by_cycle.update({int(k): v for k, v in x["accepted_by_cycle"].items()})
    cum, yield_by_cycle = 0, {}
    for k in sorted(by_cycle):
        cum += by_cycle[k]
        yield_by_cycle[str(k)] = round(cum / max(len(checked), 1), 4)
    seconds_total = st["seconds"]
    cands = sum(x["checked"] for x in st["rounds"])
    return dict(
        components=names, checked=len(checked), accepted_by_cycle={str(k): by_cycle[k] for k in sorted(by_cycle)},
        yield_by_cycle=yield_by_cycle,
        verified_by=dict(collections.Counter(a["verified_by"] for a in chosen)),
        question_by=dict(collections.Counter(a["attempts"][-1]["by"] for a in chosen)),
        question_diversity=question_diversity([c.question for _, part in parts for c in part]),
        model=dict(policy.stats, seconds=round(policy.stats["seconds"], 2)) if policy is not None else None,
        runs=st["runs"], seconds_total=round(seconds_total, 2),
        candidates_per_s=round(cands / seconds_total, 3) if seconds_total else None,
    )  # fmt: skip


def summary_markdown(s: dict) -> str:
    lines = [
        "# Data factory summary",
        "",
        f"- examples: {s['num_examples']} (target {s['target_examples']}), "
        f"train {s['splits']['train']}, test {s['splits']['test']} (held out by {s['heldout_by']})"
        + (
            f", test_skeleton {s['splits']['test_skeleton']} (unseen skeletons)"
            if "test_skeleton" in s["splits"]
            else ""
        ),
        f"- candidates {s['candidates']}, verified {s['verified']}, pool after dedup {s['pool']}",
        f"- distinct skeletons {s['distinct_skeletons']} (ratio {s['distinct_skeleton_ratio']}), skeleton "
        f"coverage {s['skeleton_coverage']} of {s['pool_distinct_skeletons']}; mix error {s['mix_error']}",
        f"- time {s['seconds']} s (all runs: {s.get('seconds_total')} s over {s.get('runs')} run(s), "
        f"{s.get('candidates_per_s')} candidates/s)",
        f"- question writer {s['components']['question_generator']}, checker {s['components']['checker']}, judge "
        f"{s['components']['judge']}; selected examples verified by {s['verified_by']}, questions by "
        f"{s['question_by']}",
        f"- check cycles: reached {s['checked']}, accepted per cycle {s['accepted_by_cycle']}, cumulative yield "
        f"{s['yield_by_cycle']}",
        "- question diversity: " + ", ".join(f"{k} {v}" for k, v in s["question_diversity"].items()),
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
    lines += ["", "| round | candidates | verified | new in pool | seconds | candidates/s |", "|" + "---|" * 6]
    lines += [f"| {x['round']} | {x['candidates']} | {x['verified']} | {x['new_in_pool']} | {x['seconds']} | "
              f"{x['candidates_per_s']} |" for x in s["rounds"]]  # fmt: skip
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
    p.add_argument("--restart", action="store_true", help="ignore <out>/state (default: a killed run resumes)")
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
    out = a.out or os.path.join(str(config.workdir), "factory")
    with Executor.from_config(config.executor) as ex:
        records, summary = run_factory(fcfg, ex, out, seed=int(config.seed), restart=a.restart)
    path = write_outputs(records, summary, out, build_tfds=not a.no_tfds)
    print(summary_markdown(summary))
    print(f"[factory] wrote {out}/examples.jsonl, summary.json, summary.md" + (f"; TFDS at {path}" if path else ""))
    if path:
        print(f"[factory] train with --config.data.data_dir={os.path.join(out, 'tfds')}")
    else:  # --no-tfds: nothing for the training stages to read yet
        print("[factory] no TFDS dataset written (--no-tfds): rerun without it before training on this data")
    return 0
