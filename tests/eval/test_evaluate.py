"""EX evaluation: report numbers, report files, prediction file formats, `agro-sql eval`, BIRD loading."""

import collections
import json
import shutil

import pytest

from agro_jax import cli
from agro_jax.eval.evaluate import evaluate_policy, evaluate_predictions, load_predictions, write_report
from agro_jax.sql.benchmark_data import load_bird, load_spider, spider_hardness
from agro_jax.sql.executor import Executor


@pytest.fixture(scope="module")
def executor():
    with Executor(num_workers=2, timeout_s=5.0) as ex:
        yield ex


@pytest.fixture(scope="module")
def spider(spider_dir):
    return load_spider(str(spider_dir), schema_text=False)


def test_evaluate_predictions_breakdown_and_report(spider, executor, tmp_path):
    exs = spider[:60]
    preds = [e["sql"] for e in exs]
    preds[0], preds[1], preds[2] = None, "SELECT nonsense FROM", "SELECT 12345"
    report = evaluate_predictions(exs, preds, executor, mode="spider", batch_size=16)
    assert report["num_examples"] == 60 and report["num_correct"] == 57 and report["ex"] == pytest.approx(57 / 60)
    assert report["reasons"] == {"match": 57, "no_answer": 1, "pred_error": 1, "mismatch": 1}
    assert report["error_kinds"] == {"syntax": 1}
    assert sum(d["n"] for d in report["by_difficulty"].values()) == 60
    assert set(report["by_difficulty"]) <= {"easy", "medium", "hard", "extra"}
    wrong = [r for r in report["per_example"] if not r["matched"]]
    assert [r["index"] for r in wrong] == [0, 1, 2]
    jpath, mpath = write_report(report, str(tmp_path), "spider_dev")
    assert json.load(open(jpath))["num_correct"] == 57
    assert "**EX 95.00%** (57/60)" in open(mpath).read()


def test_evaluate_policy_hook(spider, executor):
    exs = spider[:10]
    report = evaluate_policy(exs, lambda batch: [e["sql"] for e in batch], executor, mode="bird", batch_size=4)
    assert report["ex"] == 1.0
    with pytest.raises(ValueError, match="returned 1 SQLs for a batch of 10"):
        evaluate_policy(exs, lambda batch: ["SELECT 1"], executor)


def test_load_predictions_formats(tmp_path):
    lines = tmp_path / "p.sql"
    lines.write_text("SELECT 1\n\nSELECT 2\n")
    assert load_predictions(str(lines), 3) == ["SELECT 1", None, "SELECT 2"]
    bird = tmp_path / "predict_dev.json"
    bird.write_text(json.dumps({"0": "SELECT 1\t----- bird -----\tdb", "2": "SELECT 3"}))
    assert load_predictions(str(bird), 3) == ["SELECT 1", None, "SELECT 3"]
    with pytest.raises(ValueError, match="2 predictions for 3 examples"):
        lines.write_text("SELECT 1\nSELECT 2")
        load_predictions(str(lines), 3)


def test_eval_cli_gold_and_predictions(spider_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["eval", "--data", str(spider_dir), "--format", "spider", "--out", str(out), "--max-examples", "40"]
    assert cli.main(args + ["--gold-as-pred"]) == 0
    report = json.load(open(out / "spider_dev_gold.json"))
    assert report["ex"] == 1.0 and report["skipped_missing_db"] == {"wta_1": 62}
    preds = tmp_path / "preds.sql"
    exs = load_spider(str(spider_dir), schema_text=False)[:40]
    preds.write_text("\n".join(["SELECT 1"] * 10 + [e["sql"] for e in exs[10:]]) + "\n")
    assert cli.main(args + ["--predictions", str(preds), "--mode", "bird"]) == 0
    report = json.load(open(out / "spider_dev.json"))
    assert report["mode"] == "bird" and report["num_correct"] == 30 + sum(
        r["matched"] for r in report["per_example"][:10]
    )
    assert "EX" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["eval", "--data", str(spider_dir), "--format", "spider"])  # neither predictions nor gold


def test_load_bird_format(spider_dir, tmp_path):
    root = tmp_path / "bird"
    (root / "dev_databases/concert_singer").mkdir(parents=True)
    shutil.copy(spider_dir / "database/concert_singer/concert_singer.sqlite", root / "dev_databases/concert_singer")
    recs = [
        dict(
            question_id=0,
            db_id="concert_singer",
            question="How many singers?",
            evidence="singer = person",
            SQL="SELECT count(*) FROM singer",
            difficulty="simple",
        ),
        dict(question_id=1, db_id="gone", question="q", evidence="", SQL="SELECT 1", difficulty="moderate"),
    ]
    (root / "dev.json").write_text(json.dumps(recs))
    exs = load_bird(str(root), schema_text=False)
    assert len(exs) == 1 and exs[0]["evidence"] == "singer = person" and exs[0]["difficulty"] == "simple"
    assert exs[0]["source"] == "bird" and exs[0]["split"] == "dev" and exs[0]["db_path"].endswith(".sqlite")
    (root / "dev.json").write_text(json.dumps([dict(db_id="x", question="q")]))
    with pytest.raises(ValueError, match="record 0 has no 'SQL'"):
        load_bird(str(root), schema_text=False)


def test_spider_hardness_matches_official_counts(spider):
    # Official hardness on a simple and a nested parse (fields as in Spider's dev.json `sql`).
    empty = dict(
        select=[False, [[0, [0, [0, 1, False], None]]]],
        where=[],
        groupBy=[],
        having=[],
        orderBy=[],
        limit=None,
        intersect=None,
        union=None,
        **{"except": None, "from": dict(table_units=[["table_unit", 0]], conds=[])},
    )
    assert spider_hardness(empty) == "easy"
    nested = dict(empty, where=[[False, 8, [0, [0, 1, False], None], dict(empty), None]])
    assert spider_hardness(nested) == "hard"
    assert {e["difficulty"] for e in spider} == {"easy", "medium", "hard", "extra"}


def test_spider_dev_hardness_distribution_is_the_official_one(spider_dir):
    # The published Spider dev split: 248 easy, 446 medium, 174 hard, 166 extra (all 1034, wta_1 included).
    raw = json.load(open(spider_dir / "dev.json"))
    counts = collections.Counter(spider_hardness(e["sql"]) for e in raw)
    assert counts == {"easy": 248, "medium": 446, "hard": 174, "extra": 166}
