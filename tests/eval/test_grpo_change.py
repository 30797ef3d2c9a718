"""The report reads as a user expects: difficulty levels in their order, a "What GRPO changed" figure and table from
the run's own files, and a panel of float noise (a GRPO loss of +-4e-8) stated in words instead of drawn as a curve."""

import json
import pathlib

from agro_jax.eval.report import _below_noise, write_report


def _run(tmp_path: pathlib.Path, losses) -> pathlib.Path:
    (tmp_path / "factory").mkdir()
    hist = {"complex": 12, "highly_complex": 5, "moderate": 17, "simple": 14}  # alphabetical, as the factory sorts it
    (tmp_path / "factory/summary.json").write_text(json.dumps({"num_examples": 48, "difficulty_histogram": hist}))
    (tmp_path / "grpo").mkdir()
    rows = [dict(step=i + 1, reward_mean=-1.0 + 0.2 * i, format_rate=0.1 * i, loss=v) for i, v in enumerate(losses)]
    (tmp_path / "grpo/metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "eval").mkdir()
    before = dict(name="sft", ex=0.125, num_examples=8, reasons={"no_answer": 6, "mismatch": 1, "match": 1})
    after = dict(name="grpo", ex=0.375, num_examples=8, reasons={"no_answer": 2, "mismatch": 3, "match": 3})
    for r in (before, after):
        (tmp_path / f"eval/{r['name']}.json").write_text(json.dumps(r))
    return pathlib.Path(write_report(tmp_path))


def test_factory_difficulties_in_level_order(tmp_path):
    md = _run(tmp_path, [0.1, 0.3, 0.2, 0.05, 0.4]).read_text()
    rows = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ") and "%" in line]
    assert rows[:4] == ["simple", "moderate", "complex", "highly_complex"]


def test_what_grpo_changed_figure_and_table(tmp_path):
    md = _run(tmp_path, [0.1, 0.3, 0.2, 0.05, 0.4]).read_text()
    section = md[md.index("## What GRPO changed") :]
    assert (tmp_path / "report/grpo_change.png").stat().st_size > 5000
    assert "| held-out EX % | 12.5 | 37.5 | 25 |" in section
    assert "| outcome: no_answer | 6 | 2 | -4 |" in section and "| outcome: match | 1 | 3 | 2 |" in section
    assert "| held-out answered % (format) | 25 | 75 | 50 |" in section
    # 5 steps: first / last fifth = step 1 / step 5 (reward -1 -> -0.2, format rate 0 -> 0.4)
    assert "| training reward_mean (first / last fifth of steps) | -1 | -0.2 | 0.8 |" in section
    assert "| training format_rate (first / last fifth of steps) | 0 | 0.4 | 0.4 |" in section


def test_float_noise_panel_is_stated_not_plotted(tmp_path):
    md = _run(tmp_path, [4e-8, -3e-8, 1e-8, -4e-8, 2e-8]).read_text()
    assert "Flat: loss = 0 +- 4.0e-08 (float noise, not plotted)." in md
    assert _below_noise([1.0, 1.0 + 1e-7]) and not _below_noise([1e-3, 2e-3]) and not _below_noise([0.0, 1e-5])
    (tmp_path / "real").mkdir()
    assert "Flat:" not in _run(tmp_path / "real", [0.1, 0.3, 0.2, 0.05, 0.4]).read_text()
