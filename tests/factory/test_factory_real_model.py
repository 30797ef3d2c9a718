"""The factory with the real Qwen2.5-Coder-0.5B-Instruct in the loop on a handful of simple candidates: the model writes
every question, regenerates SQL from it, and execution alone decides (accepted <=> the model's SQL returns the gold
result); failures are regenerated once (K=2). Measured on the shared 2-core machine (2026-12-01): 2 min 7 s wall,
124 s CPU, 3.8 GB RSS at load average 4-7 (7.2 min at load 20); sampler compiles are most of it. As `agro-sql
factory` in its own process at the default XLA level (2026-12-03): 157 s, with the other xdist worker idle by then."""

import json

import pytest
from helpers import run_cli

from agro_jax.sql.compare import compare
from agro_jax.sql.executor import Executor, Query

pytestmark = [pytest.mark.real_model, pytest.mark.memory_heavy]
# configs.common.paper_factory's factory (the model-in-the-loop factory is for real models: the paper's skeleton split,
# one example per query), on a handful of one-table candidates (within the 0.5B model's reach)
FACTORY = {
    "databases": "('university',)", "rounds": 1, "candidates_per_round": 12, "num_examples": 6,
    "target_mix.simple": 1.0, "target_mix.moderate": 0.0, "heldout_fraction": 0.15, "heldout_by": "skeleton",
    "skeleton_heldout_fraction": 0.0, "max_per_query": 1,
    "question_generator": "model", "checker": "model", "max_check_cycles": 2, "verify_batch": 8,
}  # fmt: skip


@pytest.fixture(scope="module")
def run(real_qwen_dir, tmp_path_factory):
    # `agro-sql factory` in its own process at XLA's default backend level: the model's decode loops are execution
    # (at the tests' -O0 this run took ~15% longer)
    work = tmp_path_factory.mktemp("work")
    overrides = [f"--config.factory.{k}={v}" for k, v in FACTORY.items()]
    run_cli("factory", "--config", "configs/tiny_cpu.py", "--workdir", work, "--no-tfds", *overrides,
            f"--config.factory.model_path={real_qwen_dir}", fast_compile=False)  # fmt: skip
    out = work / "factory"
    records = (out / "examples.jsonl").read_text().splitlines()
    summary = json.loads((out / "summary.json").read_text())
    db = str(out / "databases/university/university.sqlite")
    with Executor(num_workers=2, timeout_s=5.0) as ex:
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
