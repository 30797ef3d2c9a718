"""report.py on a synthetic run folder: real jsonl/json files, real matplotlib PNGs, numbers in the markdown."""

from __future__ import annotations

import json
import pathlib
import sqlite3

import pytest

from agro_jax.eval import report
from agro_jax.train.metrics import MetricsWriter

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path: pathlib.Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _real_eval_report(wd: pathlib.Path) -> None:
    """eval/base.json written by agro_jax.eval.evaluate itself (real SQLite + executor): 2 of 3 right, simple 1/1."""
    from agro_jax.eval import evaluate
    from agro_jax.sql.executor import Executor

    db = wd / "db.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (x INTEGER)")
    con.executemany("INSERT INTO t VALUES (?)", [(1,), (2,), (3,)])
    con.commit()
    con.close()
    gold = ["SELECT x FROM t", "SELECT max(x) FROM t", "SELECT count(*) FROM t"]
    pred = ["SELECT x FROM t", "SELECT min(x) FROM t", "SELECT count(x) FROM t"]
    examples = [{"sql": g, "db_path": str(db), "difficulty": d} for g, d in zip(gold, ["simple", "complex", "complex"])]
    with Executor(num_workers=1) as executor:
        result = evaluate.evaluate_predictions(examples, pred, executor, mode="bird")
    evaluate.write_report(result, str(wd / "eval"), "base")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> pathlib.Path:
    wd = tmp_path_factory.mktemp("run")
    # SFT metrics through the trainer's own writer (so the format is the real one); loss goes 2.0 -> 0.5.
    sft = MetricsWriter(wd / "sft", total_steps=4, tb=False)
    for step, loss in enumerate([2.0, 1.4, 0.9, 0.5]):
        sft.write(step, {"loss": loss, "accuracy": 0.2 + 0.1 * step})
    sft.close()
    # GRPO rows with missing keys here and there (kl only from step 1, one row with no ex) + a truncated last line.
    rows = [
        {"step": 0, "reward_mean": -0.5, "ex": 0.1, "loss": 0.3, "probe_init/ex": 0.05, "probe/ex": 0.1},
        {"step": 1, "reward_mean": -0.1, "ex": 0.25, "kl": 0.002, "loss": 0.2},
        {"step": 2, "reward_mean": 0.2, "kl": 0.004},
        {"step": 3, "reward_mean": 0.45, "ex": 0.625, "kl": 0.006, "loss": 0.1, "probe/ex": 0.2},
    ]
    (wd / "grpo").mkdir()
    (wd / "grpo/metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + '\n{"step": 4, "rew')
    (wd / "eval").mkdir()
    (wd / "eval/sft.json").write_text(
        json.dumps({"ex": 0.4, "n": 50, "by_difficulty": {"simple": {"ex": 0.6, "n": 20}, "complex": 0.2}})
    )
    (wd / "eval/grpo.json").write_text(
        json.dumps({"ex": 0.5234, "n": 50, "by_difficulty": {"simple": {"ex": 0.7, "n": 20}, "complex": 0.35}})
    )
    _real_eval_report(wd)
    (wd / "eval/test_skeleton").mkdir()  # a second held-out split (eval.extra_splits)
    for stage, correct in (("sft", 3), ("grpo", 5)):
        (wd / f"eval/test_skeleton/{stage}.json").write_text(
            json.dumps({"name": stage, "ex": correct / 40, "num_correct": correct, "num_examples": 40})
        )
    (wd / "eval/notes.json").write_text(json.dumps({"comment": "no ex here"}))  # ignored, not fatal
    (wd / "factory").mkdir()
    stats = {
        "candidates": 1200,
        "accepted": 431,
        "difficulty_counts": {"simple": 130, "moderate": 151, "complex": 107, "highly_complex": 43},
        "rejection_reasons": {"empty_result": 402, "duplicate_skeleton": 250, "gen_as_check_mismatch": 117},
    }
    (wd / "factory/stats.json").write_text(json.dumps(stats))
    with pytest.warns(UserWarning, match="not JSON"):
        report.write_report(wd)
    return wd


def test_pngs_exist_and_are_valid(run_dir):
    for name in ("sft.png", "grpo.png", "eval_ex.png", "factory.png"):
        w, h = _png_size(run_dir / "report" / name)
        assert w > 300 and h > 200, (name, w, h)


def test_markdown_has_the_numbers(run_dir):
    md = (run_dir / "report/report.md").read_text()
    for png in ("sft.png", "grpo.png", "eval_ex.png", "factory.png"):
        assert f"({png})" in md
    # SFT loss first/last, GRPO reward first/last and max KL, in the summary tables.
    assert "| loss | 2 | 0.5 | 0.5 | 2 |" in md
    assert "| reward_mean | -0.5 | 0.45 | -0.5 | 0.45 |" in md
    assert "| kl | 0.002 | 0.006 | 0.002 | 0.006 |" in md
    assert "| ex | 0.1 | 0.625 | 0.1 | 0.625 |" in md  # the row without ex is skipped, not zero
    assert "4 logged steps (last step 3)" in md  # the truncated line did not count; nor the probe's step-0 row
    assert "| probe/ex | 0.05 | 0.2 | 0.05 | 0.2 |" in md  # the initial probe leads the curve
    # EX per example set: the held-out split (only base has counts) and the extra split, with the change.
    assert "| example set | after base | after sft | after grpo | change (points) |" in md
    assert "| held-out (eval.split) | 66.7 (2/3) | - | - | - |" in md
    assert "| test_skeleton | - | 7.5 (3/40) | 12.5 (5/40) | +5.0 |" in md
    # EX before (sft) vs after (grpo), sft first; per difficulty with n.
    assert "| difficulty | base | sft | grpo |" in md
    assert "| all | 66.67 (n=3) | 40.00 (n=50) | 52.34 (n=50) |" in md
    assert "| simple | 100.00 (n=1) | 60.00 (n=20) | 70.00 (n=20) |" in md
    assert "| complex | 50.00 (n=2) | 20.00 | 35.00 |" in md
    # Outcome counts from the real evaluator's report; reports without them show "-".
    assert "| outcome | base | sft | grpo |" in md and "| mismatch | 1 | - | - |" in md
    # Factory scalars and histograms with shares.
    assert "| accepted | 431 |" in md
    assert "| moderate | 151 | 35.0% |" in md
    assert "| empty_result | 402 | 52.3% |" in md
    assert "## Not in this run" not in md


def test_empty_run_folder_says_what_is_missing(tmp_path):
    path = report.write_report(tmp_path)
    md = path.read_text()
    for missing in ("data factory stats", "sft/metrics.jsonl", "grpo/metrics.jsonl", "eval/*.json"):
        assert f"- {missing}" in md
    assert list((tmp_path / "report").glob("*.png")) == []


@pytest.mark.filterwarnings("ignore:.*not JSON")
def test_cli_report(tmp_path, run_dir):
    from agro_jax.cli import main

    out = tmp_path / "out"
    config = str(pathlib.Path(__file__).resolve().parents[2] / "configs/tiny_cpu.py")
    assert main(["report", "--config", config, "--workdir", str(run_dir), "--out", str(out)]) == 0
    assert "52.34" in (out / "report.md").read_text()
    assert _png_size(out / "grpo.png")[0] > 300
