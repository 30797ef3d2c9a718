"""The data factory with the real model in the loop vs the rule path, on the same synthesized candidates.

    python benchmarks/factory_model_bench.py --candidates 200 --k 3 --out runs/factory_model_bench
    python benchmarks/factory_model_bench.py --judge-eval --out runs/factory_model_bench   # RuleJudge vs ModelJudge

Both factory runs go through the CLI (`agro-sql factory`, one round, same seed, so round 1 synthesizes the same
candidates): rules = RuleQuestionGenerator + RuleChecker; model = Qwen2.5-Coder-0.5B-Instruct writes the questions
(temperature 0.7, STYLES), regenerates SQL from each question (greedy) over K cycles with the executor's feedback, and
RuleJudge screens the questions. The model run resumes from its state if killed. Then, from the two runs'
verification.jsonl: verified yield per cycle, rejection reasons, candidates/s; question diversity of the first-attempt
questions over the SQLs both runs checked (equal sets) and of the accepted sets at equal size; and a seeded sample of
20 accepted + 20 rejected model-run candidates (hand_check.md) to read and judge by hand.

--judge-eval: a labeled set of questions (clean realizer questions, SQL leaks of several forms, columns the schema
lacks as identifiers and in plain words) judged by RuleJudge and by ModelJudge (the real model, greedy): accuracy,
per-label recall and false-alarm rate.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import subprocess
import sys
import time


def _cli(out: str, k: int, n: int, model: bool, extra=()) -> float:
    args = [sys.executable, "-m", "agro_jax.cli", "factory", "--config", "configs/tiny_cpu.py", "--out", out,
            "--no-tfds", "--config.factory.rounds=1", f"--config.factory.candidates_per_round={n}",
            f"--config.factory.num_examples={n}", f"--config.factory.max_check_cycles={k}", *extra]  # fmt: skip
    if model:
        args += ["--config.factory.question_generator=model", "--config.factory.checker=model",
                 "--config.factory.verify_batch=48"]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(args, check=True)
    return time.perf_counter() - t0


def _audit(out: str) -> list[dict]:
    with open(os.path.join(out, "verification.jsonl")) as f:
        return [json.loads(x) for x in f]


def compare_runs(out: str, k: int, n: int, seed: int = 0) -> dict:
    from data_factory.question_stats import question_diversity

    rules_dir, model_dir = os.path.join(out, "rules"), os.path.join(out, "model")
    t_rules = _cli(rules_dir, k, n, model=False)
    t_model = _cli(model_dir, k, n, model=True)
    s_rules = json.load(open(os.path.join(rules_dir, "summary.json")))
    s_model = json.load(open(os.path.join(model_dir, "summary.json")))
    a_rules, a_model = _audit(rules_dir), _audit(model_dir)
    first = lambda audit: {a["sql"]: a["attempts"][0]["question"] for a in audit if a["attempts"]}  # noqa: E731
    fr, fm = first(a_rules), first(a_model)
    both = sorted(set(fr) & set(fm))
    acc_r = [a["attempts"][-1]["question"] for a in a_rules if a["status"] == "accepted"]
    acc_m = [a["attempts"][-1]["question"] for a in a_model if a["status"] == "accepted"]
    m = min(len(acc_r), len(acc_m))
    rng = random.Random(seed)
    diversity = dict(
        first_attempt_same_sqls=dict(
            n=len(both),
            rules=question_diversity([fr[s] for s in both]),
            model=question_diversity([fm[s] for s in both]),
        ),  # fmt: skip
        accepted_equal_size=dict(
            n=m, rules=question_diversity(rng.sample(acc_r, m)), model=question_diversity(rng.sample(acc_m, m))
        ),  # fmt: skip
    )
    reached = [a for a in a_model if a["attempts"]]
    styles = collections.Counter(x["style"] % 4 for a in reached for x in a["attempts"] if x.get("by") == "model")
    result = dict(
        candidates=n, k=k, wall_s=dict(rules=round(t_rules, 1), model=round(t_model, 1)),
        rules={key: s_rules[key] for key in ("checked", "accepted_by_cycle", "yield_by_cycle", "rejection_reasons",
                                              "seconds_total", "candidates_per_s", "verified_by", "question_by")},
        model={key: s_model[key] for key in ("checked", "accepted_by_cycle", "yield_by_cycle", "rejection_reasons",
                                              "seconds_total", "candidates_per_s", "verified_by", "question_by",
                                              "model", "runs", "components")},
        model_styles=dict(sorted(styles.items())), diversity=diversity,
    )  # fmt: skip
    _hand_check(a_model, os.path.join(out, "hand_check.md"), seed)
    return result


def _hand_check(audit: list[dict], path: str, seed: int) -> None:
    """20 accepted + 20 rejected (of those that reached the check) model-run candidates, seeded."""
    rng = random.Random(seed)
    acc = [a for a in audit if a["status"] == "accepted"]
    rej = [a for a in audit if a["status"] == "rejected" and a["attempts"]]
    lines = ["# Hand check: model-in-the-loop factory", ""]
    for name, part in (("accepted", acc), ("rejected", rej)):
        for i, a in enumerate(rng.sample(part, min(20, len(part)))):
            lines += [f"## {name} {i + 1}: {a['db_id']} ({a['template']}, {a['reason'] or 'accepted'})",
                      f"- gold: `{a['sql']}`"]  # fmt: skip
            for x in a["attempts"]:
                lines.append(f"- cycle {x['cycle']} ({x['by']}): {x['question']}")
                lines.append(f"  - judge {x.get('judge')}, check SQL: `{x.get('check_sql')}` -> {x.get('outcome')}")
            lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def judge_eval(out: str, seed: int = 0) -> dict:
    """Labeled questions on the six embedded DBs; RuleJudge and ModelJudge verdicts against the labels."""
    from data_factory.databases import DOMAINS, build_databases
    from data_factory.judge import ModelJudge, RuleJudge
    from data_factory.model_loop import Policy
    from data_factory.synth_question import RuleQuestionGenerator
    from data_factory.synth_sql import DbContext, synthesize

    paths = build_databases(os.path.join(out, "judge_dbs"), DOMAINS, seed)
    contexts = {k: DbContext(p) for k, p in paths.items()}
    rng, items = random.Random(seed), []
    fake = ["email_address", "phone_number", "nickname", "shoe_size", "favorite_color"]
    for name, ctx in contexts.items():
        cands = synthesize(ctx, 12, rng)
        qs = RuleQuestionGenerator(seed).generate(cands, contexts, 0)
        t = ctx.schema.tables[0]
        col = next(c.name for c in t.columns if not c.name.endswith("id"))
        f = fake[len(items) % len(fake)]
        for c, q in list(zip(cands, qs))[:3]:
            items.append((name, q, "ok"))
            items.append((name, f"What does {c.sql} return?", "leak"))
        items += [
            (name, f"List the {t.name}.{col} of every {t.name}.", "leak"),
            (name, f"Give each {t.name} WHERE {col} is not empty.", "leak"),
            (name, f"How many {t.name} rows have {col} >= 3?", "leak"),
            (name, f"List the {f} of every {t.name}.", "unknown_column"),
            (name, f"Which {t.name} have a {t.name}.{f}?", "unknown_column"),
            (name, f"What is the {f.replace('_', ' ')} of each {t.name}?", "unknown_column"),
        ]
    label = {None: "ok", "judge_sql_leak": "leak", "judge_unknown_column": "unknown_column"}
    policy = Policy.load("", batch_size=8, seed=seed)
    judges = {"rules": RuleJudge(), "model": ModelJudge(policy.generate_fn(0.0, 8, "judge"))}
    res = {}
    for jname, judge in judges.items():
        t0 = time.perf_counter()
        flags = judge.judge([q for _, q, _ in items], [contexts[d] for d, _, _ in items])
        got = [label[f[0] if f else None] for f in flags]
        per = collections.defaultdict(collections.Counter)
        for (_, _, want), g in zip(items, got):
            per[want][g] += 1
        res[jname] = dict(
            accuracy=round(sum(g == w for (_, _, w), g in zip(items, got)) / len(items), 3),
            flagged_recall=round(sum(g != "ok" for (_, _, w), g in zip(items, got) if w != "ok")
                                 / sum(w != "ok" for _, _, w in items), 3),  # fmt: skip
            false_alarms=round((per["ok"]["leak"] + per["ok"]["unknown_column"]) / max(sum(per["ok"].values()), 1), 3),
            confusion={w: dict(c) for w, c in per.items()}, seconds=round(time.perf_counter() - t0, 1),
        )  # fmt: skip
    res["items"] = len(items)
    res["labels"] = dict(collections.Counter(w for _, _, w in items))
    return res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/factory_model_bench")
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--judge-eval", action="store_true")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    load = os.getloadavg()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    res = judge_eval(a.out) if a.judge_eval else compare_runs(a.out, a.k, a.candidates)
    res.update(commit=commit, date=time.strftime("%Y-%m-%d %H:%M"), load_before=[round(x, 2) for x in load],
               load_after=[round(x, 2) for x in os.getloadavg()])  # fmt: skip
    name = "judge_eval.json" if a.judge_eval else "bench.json"
    with open(os.path.join(a.out, name), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
