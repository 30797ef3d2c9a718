"""What every report section shares: reading metrics.jsonl, numeric series, markdown tables, saving figures, and
the order of evaluation labels. The sections (report.py, grpo_change.py, agent_report.py) import from here and
report.py composes them, so no section imports the composer."""

from __future__ import annotations

import json
import math
import pathlib
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

EVAL_ORDER = ("base", "pretrained", "before", "sft", "cold_start", "grpo", "after", "final")


def read_jsonl(path) -> list[dict]:
    """jsonl rows as dicts; a truncated last line (a run killed mid-write) is skipped with a warning."""
    rows = []
    for i, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{i}: skipping a line that is not JSON: {line[:80]!r}", stacklevel=2)
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of `key` where it is a finite number; rows without `step` use their index."""
    xs, ys = [], []
    for i, r in enumerate(rows):
        v = r.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(float(r.get("step", i)))
            ys.append(float(v))
    return xs, ys


def fmt_cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def md_table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(fmt_cell(c) for c in r) + " |" for r in rows]


def save_figure(fig, path: pathlib.Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def eval_rank(label: str) -> int:
    """Position of an eval label in the run's story (base, SFT, GRPO, ...); unknown labels last."""
    low = label.lower()
    return next((i for i, k in enumerate(EVAL_ORDER) if k in low), len(EVAL_ORDER))
