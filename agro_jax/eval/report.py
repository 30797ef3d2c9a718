"""Run report: `agro-sql report [--out DIR]` turns a run folder into report.md + PNG plots (matplotlib Agg).

Reads whatever the run has (every input is optional, every metric key is optional):
  <workdir>/sft/metrics.jsonl, <workdir>/grpo/metrics.jsonl   one line per step (agro_jax.train.metrics.MetricsWriter)
  <workdir>/eval/*.json                                         eval reports: {"ex": .., "n": .., "by_difficulty": ..}
  <workdir>/eval/spider/*.json                                  the eval stages' Spider subset (agent_report.py)
  <workdir>/eval/<split>/*.json                                 eval.extra_splits (e.g. test_skeleton): EX per set
  <workdir>/eval/benchmarks/*.json                              `agro-sql eval` of other data: listed beside the table
  <workdir>/factory/summary.json (or any */*stats*.json)         data factory summary: counts, histograms, rejections
and writes <workdir>/report/{report.md, grpo.png, sft.png, eval_ex.png, grpo_change.png, factory.png}. A panel whose
series all vary by less than float noise (a GRPO loss of +-4e-8) says so in words instead of plotting the noise.
"""

from __future__ import annotations

import json
import pathlib
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from agro_jax.eval.report_format import (  # noqa: E402
    eval_rank,
    md_table,
    read_jsonl,
    save_figure,
    series,
)

# (panel title, metric keys drawn in it) for the GRPO figure; keys absent from the run are skipped.
GRPO_PANELS = (
    ("reward / EX (sampled, train prompts)", ("reward_mean", "ex", "format_rate")),
    ("probe (greedy, held-out)", ("probe/ex", "probe/reward", "probe/format_rate")),
    ("KL to reference", ("kl",)),
    ("policy loss", ("loss",)),
    ("completion length (tokens)", ("completion_len",)),
)
SFT_PANELS = (("SFT loss", ("loss",)), ("token accuracy", ("accuracy", "token_acc")))
SUMMARY_KEYS = ("reward_mean", "ex", "format_rate", "probe/ex", "probe/reward", "probe/format_rate", "kl", "loss",
                "accuracy", "completion_len", "turns", "clip_frac")  # fmt: skip
DIFFICULTY_ORDER = ("all", "simple", "easy", "moderate", "medium", "complex", "hard", "highly_complex", "extra")


def _below_noise(ys: list[float]) -> bool:
    """A series whose spread is float noise (relative 1e-6): plotted, autoscale would blow the noise up to a curve."""
    return bool(ys) and max(ys) - min(ys) <= 1e-6 * max(1.0, max(abs(y) for y in ys))


def _flat_label(key: str, ys: list[float]) -> str:
    spread = max(ys) - min(ys)
    if spread == 0:
        return f"{key} = {ys[0]:.4g} at every step"
    mean, size = sum(ys) / len(ys), max(abs(y) for y in ys)
    if abs(mean) <= spread:
        return f"{key} = 0 +- {size:.1e} (float noise, not plotted)"
    return f"{key} = {mean:.6g} +- {spread / 2:.1e} (float noise, not plotted)"


def _difficulty_rank(name: str) -> tuple[int, str]:
    rank = {d: i for i, d in enumerate(DIFFICULTY_ORDER)}
    return rank.get(name, len(rank)), name


# --------------------------------------------------------------------------------------------------- sections


def training_section(rows: list[dict], stage: str, panels, out_dir: pathlib.Path) -> list[str]:
    """Curves of a training stage (one panel per metric group) + a first/last/best table."""
    panels = [(t, [k for k in keys if series(rows, k)[0]]) for t, keys in panels]
    panels = [(t, keys) for t, keys in panels if keys]
    md = [f"## {stage.upper()}", ""]
    if not panels:
        return md + [f"{len(rows)} rows in {stage}/metrics.jsonl, none with a known metric.", ""]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    flat = []  # panels shown as words: every series in them is flat up to float noise
    for ax, (title, keys) in zip(axes[0], panels):
        if all(_below_noise(series(rows, k)[1]) for k in keys):
            flat += [_flat_label(k, series(rows, k)[1]) for k in keys]
            ax.text(0.5, 0.5, "\n".join(flat[-len(keys) :]), ha="center", va="center", fontsize=9,
                    transform=ax.transAxes)  # fmt: skip
            ax.set_title(title)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        for k in keys:
            xs, ys = series(rows, k)
            ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, label=k)
        ax.set_title(title)
        ax.set_xlabel(f"{stage} step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, out_dir / f"{stage}.png")
    keys = [k for k in SUMMARY_KEYS if series(rows, k)[0]]
    table = []
    for k in keys:
        _, ys = series(rows, k)
        table.append([k, ys[0], ys[-1], min(ys), max(ys)])
    steps = series(rows, "step")[1] or [float(len(rows) - 1)]
    n = sum(not r.get("probe_init") for r in rows)  # the probe's step-0 row (with_probe_init) is not a step
    md += [f"{n} logged steps (last step {int(max(steps))}).", "", f"![{stage}]({stage}.png)", ""]
    md += [f"Flat: {'; '.join(flat)}.", ""] if flat else []
    return md + md_table(["metric", "first", "last", "min", "max"], table) + [""]


def with_probe_init(rows: list[dict]) -> list[dict]:
    """GRPO rows with the initial policy's probe (`probe_init/*`, logged in the first row) as a step-0 row of
    `probe/*`, so the probe curve starts at the cold-start checkpoint."""
    init = {
        k.replace("probe_init/", "probe/"): v for r in rows[:1] for k, v in r.items() if k.startswith("probe_init/")
    }
    return [{"step": 0, "probe_init": True, **init}, *rows] if init else rows


def splits_section(workdir: pathlib.Path) -> list[str]:
    """One line per evaluated example set (the held-out split in eval/, every other in eval/<set>/): EX (correct/n)
    after each stage and the change from the first stage to the last, in points."""
    folders = [("held-out (eval.split)", workdir / "eval")]
    folders += [(p.name, p) for p in sorted((workdir / "eval").glob("*/")) if p.name not in ("benchmarks", ".partial")]
    got, stages = {}, set()
    for label, folder in folders:
        for p in sorted(folder.glob("*.json")):
            try:
                r = json.loads(p.read_text())
            except (json.JSONDecodeError, OSError):
                continue
            if isinstance(r, dict) and isinstance(r.get("num_correct"), int) and r.get("num_examples"):
                got.setdefault(label, {})[_eval_label(p, r)] = (r["num_correct"], int(r["num_examples"]))
                stages.add(_eval_label(p, r))
    if not got:
        return []
    order = sorted(stages, key=eval_rank)
    rows = []
    for label, by in got.items():
        cells = [f"{100 * by[st][0] / by[st][1]:.1f} ({by[st][0]}/{by[st][1]})" if st in by else "-" for st in order]
        have = [st for st in order if st in by]
        first, last = (by[have[0]], by[have[-1]]) if len(have) > 1 else (None, None)
        rows.append([label, *cells, f"{100 * (last[0] / last[1] - first[0] / first[1]):+.1f}" if first else "-"])
    md = ["## EX by example set (strict answer format)", ""]
    return md + md_table(["example set", *[f"after {st}" for st in order], "change (points)"], rows) + [""]


def _eval_label(path: pathlib.Path, report: dict) -> str:
    return str(report.get("name") or report.get("label") or report.get("stage") or path.stem)


def _ex_by_difficulty(report: dict) -> dict[str, tuple[float, int | None]]:
    """{"all": (ex, n), difficulty: (ex, n), ...}; accepts {d: ex} or {d: {"ex": .., "n": ..}}."""
    out = {}
    if isinstance(report.get("ex"), int | float):
        out["all"] = (float(report["ex"]), report.get("n") or report.get("num_examples"))
    for d, v in (report.get("by_difficulty") or {}).items():
        if isinstance(v, dict) and isinstance(v.get("ex"), int | float):
            out[str(d)] = (float(v["ex"]), v.get("n"))
        elif isinstance(v, int | float):
            out[str(d)] = (float(v), None)
    return out


def eval_section(paths: list[pathlib.Path], out_dir: pathlib.Path) -> list[str]:
    """EX before vs after training (one bar series per eval report), overall and by difficulty."""
    reports, outcomes = [], {}
    for p in paths:
        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, OSError) as e:
            warnings.warn(f"skipping eval report {p}: {e}", stacklevel=2)
            continue
        if isinstance(data, dict) and _ex_by_difficulty(data):
            reports.append((_eval_label(p, data), _ex_by_difficulty(data)))
            outcomes[reports[-1][0]] = data.get("reasons") if _numeric_dict(data.get("reasons")) else {}
    if not reports:
        return []
    reports.sort(key=lambda r: eval_rank(r[0]))
    rank = {d: i for i, d in enumerate(DIFFICULTY_ORDER)}
    diffs = sorted({d for _, ex in reports for d in ex}, key=lambda d: (rank.get(d, len(rank)), d))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(diffs) + 2), 3.6))
    width = 0.8 / len(reports)
    for j, (label, ex) in enumerate(reports):
        xs = [i + (j - (len(reports) - 1) / 2) * width for i, d in enumerate(diffs) if d in ex]
        ys = [100 * ex[d][0] for d in diffs if d in ex]
        bars = ax.bar(xs, ys, width, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(diffs)), diffs)
    ax.set_ylabel("execution accuracy (%)")
    ax.set_ylim(0, 118)  # headroom for the legend above 100% bars
    ax.set_title("EX by difficulty")
    ax.legend(fontsize=8, ncol=len(reports), loc="upper center")
    save_figure(fig, out_dir / "eval_ex.png")
    table = [[d] + [_cell(ex.get(d)) for _, ex in reports] for d in diffs]
    md = ["## Evaluation (execution accuracy, %)", "", "![eval](eval_ex.png)", ""]
    md += md_table(["difficulty", *[label for label, _ in reports]], table) + [""]
    kinds = sorted({k for label, _ in reports for k in outcomes.get(label, {})})
    if kinds:  # why predictions failed (no answer, SQL error, wrong result): shows progress EX alone can hide
        labels = [label for label, _ in reports]
        rows = [[k] + [outcomes[la].get(k, 0) if outcomes.get(la) else "-" for la in labels] for k in kinds]
        md += ["Outcomes (counts):", ""] + md_table(["outcome", *[label for label, _ in reports]], rows) + [""]
    return md


def other_evals_section(paths: list[pathlib.Path]) -> list[str]:
    """`agro-sql eval` runs on other data (eval/benchmarks/): a table beside the run's own, never merged into it."""
    rows = []
    for p in paths:
        try:
            r = json.loads(p.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        if isinstance(r, dict) and isinstance(r.get("ex"), int | float):
            skipped = sum((r.get("skipped_missing_db") or {}).values())
            rows.append([p.stem, r.get("mode", "-"), f"{100 * r['ex']:.2f}", r.get("num_examples", "-"), skipped])
    if not rows:
        return []
    md = ["## Other evaluations (`agro-sql eval`, not this run's held-out split)", ""]
    return md + md_table(["report", "mode", "EX %", "n", "skipped (no DB)"], rows) + [""]


def _cell(v) -> str:
    if v is None:
        return "-"
    ex, n = v
    return f"{100 * ex:.2f}" + (f" (n={n})" if n else "")


def _numeric_dict(v) -> bool:
    return isinstance(v, dict) and bool(v) and all(isinstance(x, int | float) for x in v.values())


def factory_section(path: pathlib.Path, out_dir: pathlib.Path) -> list[str]:
    """Scalar counts as a table; histograms (difficulty/complexity) and rejection reasons as bar charts."""
    try:
        stats = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError) as e:
        warnings.warn(f"skipping factory stats {path}: {e}", stacklevel=2)
        return []
    if not isinstance(stats, dict):
        return []
    scalars = [[k, v] for k, v in stats.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    hist_keys = [k for k, v in stats.items() if _numeric_dict(v) and ("difficult" in k or "complex" in k)]
    reject_keys = [k for k, v in stats.items() if _numeric_dict(v) and "reject" in k]
    panels = [(k, stats[k]) for k in hist_keys[:1] + reject_keys[:1]]
    md = ["## Data factory", "", f"From `{path.name}`.", ""]
    if scalars:
        md += md_table(["stat", "value"], scalars) + [""]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), squeeze=False)
        for ax, (title, counts) in zip(axes[0], panels):
            names = list(counts)
            if "reject" in title:  # most frequent reason first, horizontal so long reasons stay readable
                names.sort(key=lambda n: -counts[n])
                bars = ax.barh(names[::-1], [counts[n] for n in names[::-1]], color="tab:red")
            else:  # difficulty levels in their order (easy..extra, simple..highly_complex), not alphabetical
                names.sort(key=_difficulty_rank)
                bars = ax.bar(names, [counts[n] for n in names], color="tab:blue")
                ax.tick_params(axis="x", labelrotation=20)
            ax.bar_label(bars, fontsize=7)
            ax.set_title(title.replace("_", " "))
        save_figure(fig, out_dir / "factory.png")
        md += ["![factory](factory.png)", ""]
        for title, counts in panels:
            total = sum(counts.values()) or 1
            order = sorted(counts, key=_difficulty_rank) if "reject" not in title else list(counts)
            rows = [[k, counts[k], f"{100 * counts[k] / total:.1f}%"] for k in order]
            md += [f"**{title}**", ""] + md_table(["", "count", "share"], rows) + [""]
    return md


# ------------------------------------------------------------------------------------------------------- main


def _find_factory_stats(workdir: pathlib.Path) -> pathlib.Path | None:
    for p in (workdir / "factory/summary.json", workdir / "factory/stats.json", workdir / "factory_stats.json"):
        if p.is_file():
            return p
    found = sorted(workdir.glob("*/*stats*.json"))
    return found[0] if found else None


def write_report(workdir, out_dir=None) -> pathlib.Path:
    """Writes report.md (+ PNGs) for the run in `workdir`; returns the markdown path. Missing inputs are noted."""
    workdir = pathlib.Path(workdir)
    out_dir = pathlib.Path(out_dir) if out_dir else workdir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    md = ["# AGRO-SQL run report", "", f"Run folder: `{workdir}`", ""]
    missing = []
    factory = _find_factory_stats(workdir)
    md += factory_section(factory, out_dir) if factory else []
    missing += [] if factory else ["data factory stats"]
    for stage, panels in (("sft", SFT_PANELS), ("grpo", GRPO_PANELS)):
        path = workdir / stage / "metrics.jsonl"
        md += training_section(with_probe_init(read_jsonl(path)), stage, panels, out_dir) if path.is_file() else []
        missing += [] if path.is_file() else [f"{stage}/metrics.jsonl"]
    evals = sorted((workdir / "eval").glob("*.json")) if (workdir / "eval").is_dir() else []
    eval_md = eval_section(evals, out_dir)
    md += splits_section(workdir) + eval_md
    missing += [] if eval_md else ["eval/*.json"]
    from agro_jax.eval.agent_report import agent_section
    from agro_jax.eval.grpo_change import grpo_change_section

    md += agent_section(workdir)  # strict vs tags-or-fence EX, turns, exploration errors, transcripts (base/sft/grpo)
    md += grpo_change_section(workdir, out_dir)
    md += other_evals_section(sorted((workdir / "eval" / "benchmarks").glob("*.json")))
    if missing:
        md += ["## Not in this run", "", *[f"- {m}" for m in missing], ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(md))
    return report


def report_arguments(p) -> None:
    p.add_argument("--out", default=None, help="output folder (default: <workdir>/report)")
    p.epilog = "example:\n  agro-sql report --workdir runs/tiny_cpu"


def report_main(config, args) -> int:
    path = write_report(config.workdir, args.out)
    print(f"report: {path}")
    return 0
