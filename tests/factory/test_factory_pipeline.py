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
    assert s["num_examples"] == 150 and s["splits"]["train"] + s["splits"]["test"] == 150
    assert 0.08 <= s["splits"]["test"] / 150 <= 0.3
    assert s["mix_error"] <= 0.05 and sum(s["difficulty_histogram"].values()) == 150
    assert s["leaked_test_skeletons"] == 0
    assert 0 < s["distinct_skeleton_ratio"] <= 1 and 0 < s["skeleton_coverage"] <= 1
    assert s["verified"] <= s["candidates"] and len(s["rounds"]) >= 1
    assert s["rejection_reasons"] and all(v > 0 for v in s["rejection_reasons"].values())
    md = (run / "summary.md").read_text()
    assert "| rejection reason | count |" in md and "highly_complex" in md


def test_every_emitted_example_is_verified(run):
    train, test = load_examples(str(run / "tfds"), "train"), load_examples(str(run / "tfds"), "test")
    exs = train + test
    assert len(exs) == 150 and {e["split"] for e in train} == {"train"} and {e["split"] for e in test} == {"test"}
    assert not {e["skeleton"] for e in train} & {e["skeleton"] for e in test}
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
