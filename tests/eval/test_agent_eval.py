"""The agent-level numbers of an evaluation (agro_jax/eval/agent_eval.py) and their report section (agent_report.py),
on hand-written rollout records scored by the real executor over a real SQLite file; the Spider subset on the
shared Spider copy."""

import json
import sqlite3

from ml_collections import ConfigDict

from agro_jax.eval import agent_eval
from agro_jax.eval.agent_report import agent_section
from agro_jax.eval.evaluate import evaluate_policy
from agro_jax.sql.executor import Executor


def _db(tmp_path):
    path = tmp_path / "t.sqlite"
    with sqlite3.connect(path) as c:
        c.executescript("CREATE TABLE t (a INT); INSERT INTO t VALUES (1), (2), (3);")
    return str(path)


def _rec(final, reason, *turns):
    return {"final_sql": final, "finish_reason": reason, "num_turns": len(turns), "prompt_tokens": 10,
            "generated_tokens": 5 * len(turns), "turns": list(turns)}  # fmt: skip


FENCE = {"text": "Here:\n```sql\nSELECT count(*) FROM t\n```", "tokens": 9, "stop": "stop_id"}
ERR = {"text": "<think>x</think>\n<sql>SELECT b FROM t</sql>", "tokens": 9, "stop": "stop_string",
       "observation": "Error (runtime): no such column: b"}  # fmt: skip
FIXED = {"text": "<think>y</think>\n<answer>SELECT count(*) FROM t</answer>", "tokens": 9, "stop": "stop_string"}
WRONG = {"text": "<think>y</think>\n<answer>SELECT a FROM t</answer>", "tokens": 9, "stop": "stop_string"}
CUT = {"text": "<think>and then", "tokens": 48, "stop": "budget"}

RECORDS = [
    _rec("SELECT count(*) FROM t", "answer", FENCE),  # fenced: right under tags_or_fence only
    _rec("SELECT count(*) FROM t", "answer", ERR, FIXED),  # explored, error, corrected
    _rec("SELECT a FROM t", "answer", ERR, WRONG),  # explored, error, wrong answer
    _rec(None, "truncated", CUT),
]


def test_strict_answers_and_agent_stats(tmp_path):
    db = _db(tmp_path)
    examples = [{"question": f"q{i}", "sql": "SELECT count(*) FROM t", "db_path": db} for i in range(4)]
    assert [agent_eval.strict_sql(r) for r in RECORDS] == [None, "SELECT count(*) FROM t", "SELECT a FROM t", None]
    assert agent_eval.strict_record(RECORDS[0])["finish_reason"] == "invalid"
    strict = iter([agent_eval.strict_record(r) for r in RECORDS])
    with Executor(num_workers=1) as ex:
        report = evaluate_policy(examples, lambda b: [next(strict) for _ in b], ex, "bird", answer_format="tags")
    a = agent_eval.agent_stats(RECORDS, report["per_example"])
    assert report["num_correct"] == 1 and report["reasons"] == {"no_answer": 2, "match": 1, "mismatch": 1}
    assert (a["turns"], a["well_formed_turns"]) == (6, 4)  # the fence turn and the cut turn are not well formed
    assert (a["exploration_queries"], a["exploration_errors"], a["error_episodes"]) == (2, 2, 2)
    assert (a["error_then_executes"], a["error_then_correct"]) == (2, 1)
    assert a["turns_hist"] == {"1": 2, "2": 2} and a["mean_turns"] == 1.5


def test_report_section_compares_evaluations_and_shows_transcripts(tmp_path):
    db = _db(tmp_path)
    examples = [{"question": f"q{i}", "sql": "SELECT count(*) FROM t", "db_path": db} for i in range(4)]
    base = [_rec(r["final_sql"], r["finish_reason"], FENCE) for r in RECORDS]  # answers in fences only
    (tmp_path / "run/eval").mkdir(parents=True)
    with Executor(num_workers=1) as ex:
        for name, recs in (("base", base), ("sft", RECORDS)):
            strict = iter([agent_eval.strict_record(r) for r in recs])
            report = evaluate_policy(examples, lambda b, s=strict: [next(s) for _ in b], ex, "bird")
            report["agent"].update(agent_eval.agent_stats(recs, report["per_example"]))
            report["tags_or_fence"] = {"num_correct": sum(r["final_sql"] == examples[0]["sql"] for r in recs)}
            report["name"] = name
            (tmp_path / f"run/eval/{name}.json").write_text(json.dumps(report))
    md = "\n".join(agent_section(tmp_path / "run"))
    assert "| base | 4 | 0.0% (0/4) | 50.0% (2/4) | 0.0% (0/4) |" in md
    assert "| sft | 4 | 25.0% (1/4) | 50.0% (2/4) | 66.7% (4/6) |" in md
    assert "### Example 1" in md  # right after training, missed before: the first pick
    assert "    [observation]" in md and "    Error (runtime): no such column: b" in md


def test_spider_subset_is_every_kth_executable_example(spider_dir):
    with Executor(num_workers=2) as ex:
        sub = agent_eval.spider_subset(spider_dir, 20, ex)
    assert len(sub) == 49 and len({e["db_id"] for e in sub}) == 17  # 972 executable dev examples
    assert sub[0]["question"] == "How many singers do we have?" and "singer(" in sub[0]["schema_text"]


def test_partial_records_are_reused_only_for_the_same_examples_and_policy(tmp_path):
    """A killed evaluation resumes from eval/.partial: rows of another question, of a policy trained again (its step
    dirs changed) or cut by the kill are not reused. Every row found -> no model is loaded at all."""
    ckpts = tmp_path / "checkpoints"
    (ckpts / "2").mkdir(parents=True)
    before = agent_eval.policy_id(ckpts)
    examples = [{"question": q} for q in ("q0", "q1", "q2")]
    rows = [dict(index=i, question=q, policy=before, record=RECORDS[i]) for i, q in enumerate(("q0", "x", "q2"))]
    partial = tmp_path / "p.jsonl"
    partial.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"index": 1, "quest')  # the kill cut this line
    assert sorted(agent_eval._load_partial(str(partial), examples, before)) == [0, 2]
    (ckpts / "3").mkdir()  # trained again: a new step
    again = agent_eval.policy_id(ckpts)
    assert again != before and agent_eval._load_partial(str(partial), examples, again) == {}
    (ckpts / "3").rmdir()
    config = ConfigDict({"eval": {"batch_size": 2}, "seed": 0})
    agent = agent_eval.GreedyAgent(config, ckpts, tokenizer=None)
    examples[1]["question"] = "x"
    assert agent_eval.generate_records(config, examples, agent, partial=str(partial), log=print) == RECORDS[:3]
    assert agent._loaded is None
