"""The factory with the real Qwen2.5-Coder-0.5B-Instruct in the loop on a handful of simple candidates: the model writes
every question, regenerates SQL from it, and execution alone decides (accepted <=> the model's SQL returns the gold
result); failures are regenerated once (K=2). Measured on the shared 2-core machine (2026-12-01): 2 min 7 s wall,
124 s CPU, 3.8 GB RSS at load average 4-7 (7.2 min at load 20); sampler compiles are most of it."""

import json

import pytest
from ml_collections import ConfigDict

from agro_jax.config import load_config
from agro_jax.sql.compare import compare
from agro_jax.sql.executor import Executor, Query
from configs.common import paper_factory
from data_factory.pipeline import run_factory

pytestmark = [pytest.mark.real_model, pytest.mark.memory_heavy]


@pytest.fixture(scope="module")
def run(real_qwen_dir, tmp_path_factory):
    c = load_config("configs/tiny_cpu.py", [])
    paper_factory(c)  # the model-in-the-loop factory is for real models: the paper's mix and skeleton split
    f = c.factory
    f.databases, f.rounds, f.candidates_per_round, f.num_examples = ("university",), 1, 12, 6
    f.target_mix = ConfigDict({"simple": 1.0})  # one-table queries: within the 0.5B model's reach
    f.question_generator, f.checker, f.model_path, f.max_check_cycles, f.verify_batch = (
        "model", "model", str(real_qwen_dir), 2, 8,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("factory")
    db = str(out / "databases/university/university.sqlite")
    with Executor(num_workers=2, timeout_s=5.0) as ex:
        records, summary = run_factory(f, ex, str(out), seed=0, log=lambda *_: None)
        audit = [json.loads(x) for x in (out / "verification.jsonl").read_text().splitlines()]
        reached = [a for a in audit if a["attempts"]]
        tried = [(a, x) for a in reached for x in a["attempts"] if x.get("check_sql")]
        gold = ex.run_many([Query(db, a["sql"]) for a, _ in tried])
        pred = ex.run_many([Query(db, x["check_sql"]) for _, x in tried])
    return records, summary, reached, tried, gold, pred


def test_model_writes_and_checks_and_execution_decides(run):
    records, summary, reached, tried, gold, pred = run
    assert summary["components"]["question_generator"] == "model" and summary["components"]["checker"] == "model"
    assert summary["components"]["judge"] == "rules" and summary["model"]["prompts"] > 0
    assert len(reached) >= 4 and summary["checked"] == len(reached)
    assert all(x["by"] == "model" and x["question"].strip() for a in reached for x in a["attempts"])
    assert tried, "the model wrote no SQL at all"
    for (a, x), g, p in zip(tried, gold, pred):  # accepted exactly when the model's SQL returns the gold result
        assert (x["outcome"] == "match") == (p.ok and compare(p, g, "bird", a["sql"])), (a["sql"], x)


def test_regeneration_and_verdicts(run):
    records, summary, reached, tried, gold, pred = run
    failed_first = [a for a in reached if a["attempts"][0].get("outcome") != "match"]
    assert all(len(a["attempts"]) == 2 for a in failed_first)  # K=2: every first failure got a second question
    assert all(len(a["attempts"]) == 1 for a in reached if a["attempts"][0].get("outcome") == "match")
    accepted = [a for a in reached if a["status"] == "accepted"]
    assert accepted and all(a["verified_by"] == "model" for a in accepted)
    assert summary["verified_by"] == {"model": len(records)} and len(records) >= 1
    reasons = {a["reason"] for a in reached if a["status"] == "rejected"}
    assert reasons <= {"check_mismatch", "check_error", "check_unparseable", "judge_sql_leak", "judge_unknown_column"}
