"""`agro-sql factory` end to end: rounds, summary, held-out split, TFDS output; every emitted example's SQL executes
on its DB, equals its re-run, and its question regenerates SQL with the same result."""

import json
import os

import pytest

from agro_jax import cli
from agro_jax.data.loader import load_examples
from agro_jax.sql.compare import compare
from agro_jax.sql.executor import Executor, Query
from agro_jax.sql.schema import render_schema
from data_factory.checker import RuleChecker
from data_factory.synth_sql import DbContext

ARGS = ["--config.factory.num_examples=150", "--config.factory.candidates_per_round=400", "--config.factory.rounds=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    assert cli.main(["factory", "--config", "configs/tiny_cpu.py", "--workdir", str(work), *ARGS]) == 0
    return work / "factory"


def test_outputs_and_summary(run):
    for name in ("examples.jsonl", "summary.json", "summary.md", "tfds/agro_sql/1.0.0/dataset_info.json"):
        assert (run / name).is_file(), name
    s = json.loads((run / "summary.json").read_text())
    sp = s["splits"]
    assert s["num_examples"] == 150 and sp["train"] + sp["test"] + sp["test_skeleton"] == 150
    assert 1 <= sp["test"] <= 0.2 * 150 and 0.05 <= sp["test_skeleton"] / 150 <= 0.2  # few queries repeat at 150
    assert s["mix_error"] <= 0.05 and sum(s["difficulty_histogram"].values()) == 150
    # tiny_cpu holds out by literal: every test query is trained on with other values; test_skeleton's are unseen
    assert s["heldout_by"] == "literal" and s["test_queries_seen_in_train"] == sp["test"]
    assert s["leaked_test_skeleton_skeletons"] == 0
    assert 0 < s["distinct_skeleton_ratio"] <= 1 and 0 < s["skeleton_coverage"] <= 1
    assert s["verified"] <= s["candidates"] and len(s["rounds"]) >= 1
    assert s["rejection_reasons"] and all(v > 0 for v in s["rejection_reasons"].values())
    md = (run / "summary.md").read_text()
    assert "| rejection reason | count |" in md and f"test_skeleton {sp['test_skeleton']} (unseen skeletons)" in md


def test_every_emitted_example_is_verified(run):
    train, test, skel = (load_examples(str(run / "tfds"), s) for s in ("train", "test", "test_skeleton"))
    exs = train + test + skel
    assert len(exs) == 150
    assert [{e["split"] for e in x} for x in (train, test, skel)] == [{"train"}, {"test"}, {"test_skeleton"}]
    assert not {e["skeleton"] for e in train + test} & {e["skeleton"] for e in skel}
    assert not {e["sql"] for e in train} & {e["sql"] for e in test}
    lines = [json.loads(x) for x in (run / "examples.jsonl").read_text().splitlines()]
    assert sorted(lines, key=lambda e: e["sql"]) == sorted(exs, key=lambda e: e["sql"])
    ctx = {}
    for e in exs:
        assert os.path.isfile(e["db_path"]) and e["source"] == "factory" and e["question"].strip()
        if e["db_id"] not in ctx:
            ctx[e["db_id"]] = DbContext(e["db_path"])
            assert e["schema_text"] == render_schema(e["db_path"], 2, compact=True)  # tiny_cpu: 2 samples
    regenerated = RuleChecker().to_sql([e["question"] for e in exs], [ctx[e["db_id"]] for e in exs])
    with Executor(num_workers=2) as ex:
        first = ex.run_many([Query(e["db_path"], e["sql"]) for e in exs])
        again = ex.run_many([Query(e["db_path"], e["sql"]) for e in exs])
        checked = ex.run_many([Query(e["db_path"], s or "") for e, s in zip(exs, regenerated)])
    for e, a, b, c in zip(exs, first, again, checked):
        assert a.ok and a.rows, e["sql"]
        assert a.rows == b.rows, e["sql"]
        assert compare(c, a, "bird"), (e["question"], e["sql"])


def test_deterministic_rerun(run, tmp_path):
    assert cli.main(["factory", "--config", "configs/tiny_cpu.py", "--workdir", str(tmp_path), *ARGS, "--no-tfds"]) == 0
    strip = lambda p: [{**json.loads(x), "db_path": ""} for x in open(p).read().splitlines()]
    assert strip(tmp_path / "factory/examples.jsonl") == strip(run / "examples.jsonl")


def test_extra_databases_any_sqlite(spider_dir, tmp_path):
    """The factory runs on arbitrary SQLite DBs (here Spider's, with their quirky schemas) via extra_databases."""
    from agro_jax.config import load_config
    from data_factory.pipeline import run_factory

    cfg = load_config("configs/tiny_cpu.py", [])
    f = cfg.factory
    f.databases, f.num_examples, f.candidates_per_round, f.rounds = (), 40, 200, 1
    f.extra_databases = (
        str(spider_dir / "database/concert_singer/*.sqlite"),
        str(spider_dir / "database/pets_1/*.sqlite"),
    )
    with Executor(num_workers=2) as ex:
        records, summary = run_factory(f, ex, str(tmp_path), seed=0, log=lambda *_: None)
    assert {r["db_id"] for r in records} == {"concert_singer", "pets_1"}
    assert summary["num_examples"] == 40 and summary["mix_error"] <= 0.05
    assert all(str(spider_dir) in r["db_path"] for r in records)  # used in place, not copied
