"""The report's "What GRPO changed" section: the held-out evaluation before (eval/sft.json) and after (eval/grpo.json)
GRPO, and the training reward / format rate at the start and end of the GRPO stage (grpo/metrics.jsonl).

    md = grpo_change_section(workdir, out_dir)   # [] when the run has neither pair; writes grpo_change.png

Panels: EX before vs after; outcome counts (match, mismatch, pred_error, no_answer, ...) before vs after; reward and
format rate, training (mean of the first vs last fifth of the logged steps) and held-out (answered fraction).
"""

from __future__ import annotations

import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from agro_jax.eval.report_format import md_table, read_jsonl, save_figure, series  # noqa: E402


def _eval(path: pathlib.Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("ex"), int | float) else None


def _ends(ys: list[float]) -> tuple[float, float]:
    """Means of the first and the last fifth (at least one step) of a training series."""
    k = max(1, len(ys) // 5)
    return sum(ys[:k]) / k, sum(ys[-k:]) / k


def grpo_change_section(workdir, out_dir) -> list[str]:
    workdir, out_dir = pathlib.Path(workdir), pathlib.Path(out_dir)
    before, after = _eval(workdir / "eval/sft.json"), _eval(workdir / "eval/grpo.json")
    metrics = workdir / "grpo/metrics.jsonl"
    rows = read_jsonl(metrics) if metrics.is_file() else []
    train = {k: _ends(ys) for k in ("reward_mean", "format_rate") if (ys := series(rows, k)[1])}
    if not (before and after) and not train:
        return []
    table, panels = [], []
    if before and after:
        n0, n1 = before.get("num_examples") or 0, after.get("num_examples") or 0
        table.append(["held-out EX %", 100 * before["ex"], 100 * after["ex"], 100 * (after["ex"] - before["ex"])])
        kinds = sorted(set(before.get("reasons") or {}) | set(after.get("reasons") or {}))
        counts = {k: ((before.get("reasons") or {}).get(k, 0), (after.get("reasons") or {}).get(k, 0)) for k in kinds}
        table += [[f"outcome: {k}", a, b, b - a] for k, (a, b) in counts.items()]
        if n0 and n1 and "no_answer" in kinds:
            a0, a1 = 100 * (1 - counts["no_answer"][0] / n0), 100 * (1 - counts["no_answer"][1] / n1)
            table.append(["held-out answered % (format)", a0, a1, a1 - a0])
        panels.append(("held-out EX (%)", {"EX": (100 * before["ex"], 100 * after["ex"])}))
        panels.append((f"held-out outcomes (n={n0} / {n1})", counts))
    for k, (a, b) in train.items():
        table.append([f"training {k} (first / last fifth of steps)", a, b, b - a])
    if train:
        panels.append(("GRPO training: start vs end", train))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    for ax, (title, bars_by_name) in zip(axes[0], panels):
        names = list(bars_by_name)
        xs = range(len(names))
        for j, (label, color) in enumerate((("before / start", "tab:gray"), ("after / end", "tab:green"))):
            bars = ax.bar([x + (j - 0.5) * 0.38 for x in xs], [bars_by_name[n][j] for n in names], 0.38, label=label,
                          color=color)  # fmt: skip
            ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_xticks(list(xs), names, rotation=15 if len(names) > 2 else 0)
        ax.set_title(title)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.legend(fontsize=7)
    save_figure(fig, out_dir / "grpo_change.png")
    md = ["## What GRPO changed", "", "![grpo change](grpo_change.png)", ""]
    return md + md_table(["", "before (SFT) / start", "after (GRPO) / end", "change"], table) + [""]
