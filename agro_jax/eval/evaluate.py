"""Execution-accuracy (EX) evaluation on Spider/BIRD-format data, and the `agro-sql eval` subcommand.

    report = evaluate_predictions(examples, predicted_sqls, executor, mode="spider")
    write_report(report, out_dir)   # eval_<name>.json + eval_<name>.md

`agro-sql eval --data DIR --format spider|bird (--predictions FILE | --gold-as-pred) [--out DIR] [--mode M]`
Predictions: one SQL per line (line i = example i), or JSON: a list of SQL strings or a {"<index>": sql} dict
(BIRD's predict_dev.json format "SQL\\t----- bird -----\\tdb_id" is accepted). Empty/"null" -> no answer.
`evaluate_policy` is the hook for model rollouts: pass any `generate_fn(batch_of_examples) -> list[sql | None]`.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import time

from tqdm import tqdm

from agro_jax.rl.rewards import compute_rewards

_BIRD_SEP = "\t----- bird -----\t"


def evaluate_predictions(examples, predicted_sqls, executor, mode: str = "bird", batch_size: int = 256) -> dict:
    """EX of predicted_sqls (None = no answer) against each example's gold `sql`, with difficulty breakdown."""
    if len(examples) != len(predicted_sqls):
        raise ValueError(f"evaluate_predictions: {len(examples)} examples but {len(predicted_sqls)} predictions")
    cfg = dict(correct=1.0, wrong=0.0, bad_format=0.0, compare_mode=mode)
    t0 = time.perf_counter()
    per_example = []
    for start in tqdm(range(0, len(examples), batch_size), desc=f"eval EX ({mode})", unit="batch"):
        exs = examples[start : start + batch_size]
        preds = predicted_sqls[start : start + batch_size]
        _, infos = compute_rewards(
            preds, [e["sql"] for e in exs], [e["db_path"] for e in exs], executor, cfg, check_syntax=False
        )
        for j, (ex, pred, info) in enumerate(zip(exs, preds, infos)):
            per_example.append(
                dict(
                    index=start + j,
                    db_id=ex.get("db_id", ""),
                    difficulty=ex.get("difficulty", "") or "unknown",
                    question=ex.get("question", ""),
                    gold=ex["sql"],
                    pred=pred,
                    matched=bool(info["matched"]),
                    reason=info["reason"],
                    error_kind=info.get("error_kind"),
                    error_message=(info.get("error_message") or "")[:300],
                )
            )
    by_diff = collections.defaultdict(lambda: [0, 0])
    for r in per_example:
        by_diff[r["difficulty"]][0] += 1
        by_diff[r["difficulty"]][1] += r["matched"]
    n = len(per_example)
    correct = sum(r["matched"] for r in per_example)
    return dict(
        mode=mode,
        num_examples=n,
        num_correct=correct,
        ex=correct / n if n else 0.0,
        by_difficulty={d: dict(n=a, correct=c, ex=c / a) for d, (a, c) in sorted(by_diff.items())},
        reasons=dict(collections.Counter(r["reason"] for r in per_example)),
        error_kinds=dict(collections.Counter(r["error_kind"] for r in per_example if r["error_kind"])),
        elapsed_s=time.perf_counter() - t0,
        per_example=per_example,
    )


def evaluate_policy(
    examples, generate_fn, executor, mode: str = "bird", batch_size: int = 16, answer_format: str | None = None
) -> dict:
    """Hook for greedy policy rollouts, then EX. generate_fn(list[example]) -> per example the final SQL (str | None)
    or a record (rollout.loop.greedy_generate_fn: final_sql, finish_reason, turns, token counts), which the report
    keeps as that example's transcript (JSON) and summarises (finish reasons, prompt/generated tokens); a prompt over
    rollout.max_prompt_len is not generated (finish reason prompt_too_long) and counts as no answer."""
    outs = []
    for start in tqdm(range(0, len(examples), batch_size), desc="generate", unit="batch"):
        batch = examples[start : start + batch_size]
        out = list(generate_fn(batch))
        if len(out) != len(batch):
            raise ValueError(f"generate_fn returned {len(out)} SQLs for a batch of {len(batch)} examples")
        outs += out
    records = [o if isinstance(o, dict) else None for o in outs]
    preds = [o["final_sql"] if isinstance(o, dict) else o for o in outs]
    report = evaluate_predictions(examples, preds, executor, mode)
    if answer_format is not None:
        report["answer_format"] = answer_format
    if any(r is not None for r in records):
        recs = [r for r in records if r is not None]
        for row, rec in zip(report["per_example"], records):
            if rec is not None:
                row["transcript"] = {k: v for k, v in rec.items() if k != "final_sql"}
                row["finish_reason"] = rec.get("finish_reason")
        prompt_n = sorted(int(r.get("prompt_tokens", 0)) for r in recs)
        report["agent"] = dict(
            finish_reasons=dict(collections.Counter(r.get("finish_reason") for r in recs)),
            prompts_too_long=sum(r.get("finish_reason") == "prompt_too_long" for r in recs),
            prompt_tokens=dict(
                median=prompt_n[len(prompt_n) // 2], p95=prompt_n[int(0.95 * (len(prompt_n) - 1))], max=prompt_n[-1]
            ),  # fmt: skip
            generated_tokens_mean=sum(int(r.get("generated_tokens", 0)) for r in recs) / len(recs),
            turns_mean=sum(int(r.get("num_turns", 0)) for r in recs) / len(recs),
        )
    return report


def outcome(row: dict) -> str:
    """One per-example outcome: the evaluator's reason, a missing answer split by how the rollout ended."""
    if row["reason"] == "no_answer" and row.get("finish_reason"):
        return f"no_answer ({row['finish_reason']})"
    return row["reason"]


def _failure_examples(report: dict, per_outcome: int = 2, max_chars: int = 600) -> list[str]:
    groups = collections.defaultdict(list)
    for row in report["per_example"]:
        if not row["matched"] and "transcript" in row:
            groups[outcome(row)].append(row)
    lines = []
    for name, rows in sorted(groups.items()):
        lines += ["", f"### {name} ({len(rows)})"]
        for row in rows[:per_outcome]:
            tr = row["transcript"]
            lines += ["", f"- example {row['index']} ({row['db_id']}): {row['question']}", f"  - gold: `{row['gold']}`",
                      f"  - pred: `{row['pred']}` ({row.get('error_kind') or row['reason']})",
                      f"  - prompt {tr.get('prompt_tokens')} tokens, {tr.get('num_turns')} turns, "
                      f"{tr.get('generated_tokens')} generated, finish: {tr.get('finish_reason')}"]  # fmt: skip
            for k, turn in enumerate(tr.get("turns", [])):
                text = turn["text"] if len(turn["text"]) <= max_chars else turn["text"][:max_chars] + " ..."
                lines += [f"  - turn {k} ({turn['tokens']} tokens, stop: {turn['stop']}):", "", "    ```text"]
                lines += ["    " + x for x in text.splitlines()] + ["    ```"]
                if turn.get("observation") is not None:
                    lines += ["    observation: `" + turn["observation"].replace("\n", " / ")[:300] + "`"]
    return lines


def report_markdown(report: dict, title: str = "EX evaluation") -> str:
    lines = [
        f"# {title}",
        "",
        f"mode: `{report['mode']}`, examples: {report['num_examples']}, "
        f"**EX {100 * report['ex']:.2f}%** ({report['num_correct']}/{report['num_examples']})"
        + (f", answer format: `{report['answer_format']}`" if report.get("answer_format") else ""),
        "",
        "| difficulty | n | correct | EX % |",
        "|---|---:|---:|---:|",
    ]
    for d, s in report["by_difficulty"].items():
        lines.append(f"| {d} | {s['n']} | {s['correct']} | {100 * s['ex']:.2f} |")
    outcomes = collections.Counter(outcome(r) for r in report["per_example"])
    lines += ["", "| outcome | count |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(outcomes.items())]
    if report["error_kinds"]:
        lines += ["", "| prediction error kind | count |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(report["error_kinds"].items())]
    if report.get("agent"):
        a = report["agent"]
        p = a["prompt_tokens"]
        lines += [
            "",
            f"agent: prompt tokens median {p['median']} / p95 {p['p95']} / max {p['max']}; "
            f"{a['prompts_too_long']} prompts over rollout.max_prompt_len skipped (scored as no answer); "
            f"{a['turns_mean']:.2f} turns and {a['generated_tokens_mean']:.1f} generated tokens per example",
        ]
        examples = _failure_examples(report)
        if examples:
            lines += ["", "## Failures: two examples of each outcome (full transcripts in the JSON)"] + examples
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str, name: str = "eval") -> tuple[str, str]:
    """Writes <out_dir>/<name>.json (summary + per-example) and <name>.md; returns both paths."""
    os.makedirs(out_dir, exist_ok=True)
    jpath, mpath = os.path.join(out_dir, f"{name}.json"), os.path.join(out_dir, f"{name}.md")
    with open(jpath, "w") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
    with open(mpath, "w") as f:
        f.write(report_markdown(report, f"EX evaluation: {name}"))
    return jpath, mpath


def load_predictions(path: str, num_examples: int, file_indices=None, file_total: int | None = None) -> list:
    """One SQL per line, or JSON list / {"index": sql} dict (BIRD predict_*.json), one per example in order. With
    `file_indices` (each example's position in the benchmark file, of `file_total`), a full-length file (one line per
    benchmark example, also those skipped for a missing database) and dict keys go by that position."""
    from agro_jax.errors import MissingInputError, UsageError

    if not os.path.isfile(path):
        raise MissingInputError(f"--predictions {path}: no such file")
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = text.splitlines()
    if isinstance(data, dict):
        try:
            items = {int(k): v for k, v in data.items()}
        except ValueError as e:
            raise UsageError(f"{path}: JSON prediction keys must be example indices: {e}") from None
        data = [items.get(i) for i in (range(num_examples) if file_indices is None else file_indices)]
    if not isinstance(data, list):
        raise UsageError(f"{path}: predictions must be lines, a JSON list or a JSON dict, got {type(data).__name__}")
    if file_indices is not None and file_total is not None and len(data) == file_total != num_examples:
        data = [data[i] for i in file_indices]  # line i answers the benchmark's example i
    if len(data) != num_examples:
        full = f" (or {file_total}: one per example in the file)" if file_total not in (None, num_examples) else ""
        raise UsageError(f"{path}: {len(data)} predictions for {num_examples} examples; give {num_examples}{full}")
    out = []
    for v in data:
        v = None if v is None else str(v).split(_BIRD_SEP)[0].strip()
        out.append(v if v and v.lower() != "null" else None)
    return out


def evaluate_checkpoint(config, examples, checkpoint, tokenizer, mode: str) -> dict:
    """EX of the greedy agent whose weights are `checkpoint` (a checkpoints dir, one step dir, or an HF dir) on
    `examples` (dicts with question, schema_text, sql, db_path), through the executor pool."""
    import jax

    from agro_jax.rl.grpo import split_model
    from agro_jax.rollout.loop import greedy_generate_fn
    from agro_jax.rollout.sampler import Sampler
    from agro_jax.sql.executor import Executor
    from agro_jax.train.stages import build_policy

    vocab = int(config.model.vocab_size) or len(tokenizer)
    mesh, model, model_cfg = build_policy(config, vocab, init_from=checkpoint)
    graphdef, params, rest = split_model(model)
    sampler = Sampler(graphdef, rest, model_cfg, tokenizer, config.rollout)
    with jax.set_mesh(mesh), Executor.from_config(config.executor) as ex:
        generate = greedy_generate_fn(sampler, params, ex, config.rollout, seed=int(config.seed))
        return evaluate_policy(examples, generate, ex, mode, int(config.eval.batch_size),
                               answer_format=str(config.rollout.answer_format))  # fmt: skip


def check_policy_path(path: str) -> None:
    """UsageError unless `path` looks like something evaluate_checkpoint loads: an HF dir (config.json), a checkpoints
    dir (numbered step dirs), one step dir, or a file (GGUF); a run folder's error names its checkpoints."""
    from agro_jax.errors import MissingInputError, UsageError

    p = pathlib.Path(path)
    if not p.exists():
        raise MissingInputError(f"--policy {path}: no such file or directory")
    if p.is_file() or (p / "config.json").is_file() or p.name.isdigit() or any(c.name.isdigit() for c in p.iterdir()):
        return
    inside = [p / c for c in ("checkpoints", "grpo/checkpoints", "sft/checkpoints", "grpo/hf") if (p / c).is_dir()]
    run = (p / "stages.json").is_file() or (p / "grpo").is_dir() or (p / "sft").is_dir()
    what = "is a run folder" if run else "holds no checkpoint (no config.json, no numbered step dirs)"
    right = f"one of its checkpoints: {' or '.join(map(str, inside))}" if inside else "a checkpoints, step or HF dir"
    raise UsageError(f"--policy {path} {what}; give {right}")


def eval_arguments(p) -> None:
    p.add_argument("--data", required=True, help="benchmark dir (Spider: dev.json + database/; BIRD: dev.json + "
                   "dev_databases/)")  # fmt: skip
    p.add_argument("--format", choices=("spider", "bird"), required=True, help="layout of --data")
    p.add_argument("--split", default="dev", help="which file: dev -> dev.json (Spider train -> train_spider.json)")
    what = p.add_argument_group("what to evaluate (exactly one)")
    what.add_argument("--predictions", default=None, help="predictions file: one SQL per line or JSON list/dict")
    what.add_argument("--gold-as-pred", action="store_true", help="sanity check: gold SQL as predictions (EX 1)")
    what.add_argument("--policy", default=None, help="greedy agent from a checkpoints dir, step dir or HF dir")
    p.add_argument("--mode", default=None, choices=("bird", "spider", "tolerant"), help="compare mode (default: "
                   "the --format's own)")  # fmt: skip
    p.add_argument("--out", default=None, help="report dir (default <workdir>/eval/benchmarks: listed beside the "
                   "run's EX table; --out <workdir>/eval puts it into the table)")  # fmt: skip
    p.add_argument("--max-examples", type=int, default=0, help="evaluate only the first N examples (0: all)")
    p.epilog = ("example:\n  agro-sql eval --data ../shared/benchmarks/spider --format spider "
                "--policy runs/tiny_cpu/grpo/checkpoints")  # fmt: skip


def eval_main(config, args) -> int:
    from agro_jax.errors import MissingInputError, UsageError
    from agro_jax.sql.benchmark_data import last_skipped, load_bird, load_spider
    from agro_jax.sql.executor import Executor

    a = args
    if sum([bool(a.predictions), a.gold_as_pred, bool(a.policy)]) != 1:
        raise UsageError("give exactly one of --predictions FILE, --gold-as-pred or --policy CHECKPOINT")
    if not os.path.isdir(a.data):
        raise MissingInputError(f"--data {a.data}: no such directory; give a Spider/BIRD folder (dev.json + databases)")
    if a.policy:
        check_policy_path(a.policy)
    if a.predictions and not os.path.isfile(a.predictions):
        raise MissingInputError(f"--predictions {a.predictions}: no such file")
    load = load_spider if a.format == "spider" else load_bird
    examples = load(a.data, a.split, schema_text=bool(a.policy))  # the agent's prompt needs the schema text
    skipped = last_skipped()
    total = len(examples) + sum(skipped.values())
    if not examples:
        where = "database/<db_id>/<db_id>.sqlite" if a.format == "spider" else "dev_databases/<db_id>/<db_id>.sqlite"
        raise MissingInputError(f"--data {a.data}: none of the {total} {a.split} examples has its database "
                                f"(expected {where} under it; missing: {len(skipped)} databases)")  # fmt: skip
    if a.max_examples:
        examples = examples[: a.max_examples]
    if a.policy:
        from agro_jax.train.stages import policy_tokenizer

        tokenizer = policy_tokenizer(config, a.policy)
        report = evaluate_checkpoint(config, examples, a.policy, tokenizer, a.mode or a.format)
    else:
        preds = [e["sql"] for e in examples]
        if a.predictions:
            preds = load_predictions(a.predictions, len(examples), [e["file_index"] for e in examples], total)
        with Executor.from_config(config.executor) as executor:
            report = evaluate_predictions(examples, preds, executor, a.mode or a.format)
    report["skipped_missing_db"] = skipped
    out = a.out or os.path.join(config.workdir, "eval", "benchmarks")
    name = f"{a.format}_{a.split}" + ("_gold" if a.gold_as_pred else "_policy" if a.policy else "")
    jpath, mpath = write_report(report, out, name)
    n_skip = sum(skipped.values())
    note = f"\nWARNING skipped {n_skip} of {total} examples whose database is missing: {skipped}\n" if n_skip else ""
    print(report_markdown(report, name) + note)
    print(f"wrote {jpath} and {mpath}")
    return 0
