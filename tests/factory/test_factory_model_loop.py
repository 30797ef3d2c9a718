"""The model-in-the-loop factory with scripted generate_fns: K-cycle regeneration with the executor's feedback, the
judge, parsing of model output, and a factory run killed with SIGKILL that resumes to the uninterrupted result."""

import collections
import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import zlib

import pytest

from agro_jax.config import load_config
from agro_jax.sql.executor import Executor
from configs.common import paper_factory
from data_factory.checker import ModelChecker, RuleChecker, extract_sql
from data_factory.databases import build_databases
from data_factory.judge import RuleJudge
from data_factory.pipeline import run_factory
from data_factory.synth_question import ModelQuestionGenerator, RuleQuestionGenerator, first_question
from data_factory.synth_sql import DbContext, synthesize
from data_factory.verify import Verifier

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    paths = build_databases(str(tmp_path_factory.mktemp("dbs")), ("university", "sports"), seed=0)
    contexts = {n: DbContext(p) for n, p in paths.items()}
    with Executor(num_workers=2, timeout_s=5.0) as ex:
        yield contexts, ex


def _cands(setup, n=12, seed=1):
    """n candidates that pass the execution checks and whose rule question parses back to their SQL."""
    contexts, ex = setup
    cands = [dataclasses.replace(c) for c in synthesize(contexts["university"], 60, random.Random(seed))]
    runs = Verifier(ex, RuleChecker(), RuleQuestionGenerator(0), contexts).execution_reasons(cands)[0]
    cands = [c for c, r in zip(cands, runs) if r is None]
    rule_q = RuleQuestionGenerator(0).generate(cands, contexts, 0)
    keep = [c for c, q in zip(cands, rule_q) if RuleChecker().to_sql([q], [contexts[c.db_id]])[0] == c.sql]
    for c in keep:
        c.question = ""
    return keep[:n]


def _sql_of(prompt: str) -> str:
    return prompt.split("SQL: ")[1].split("\n")[0]


class Script:
    """A scripted writer/reader pair over the rule realizer: the writer answers the rule question of the prompt's SQL
    (or, while `wrong(prompt)` holds, the question of another candidate); the reader parses it with RuleChecker and
    answers in a ```sql fence. Every prompt is recorded."""

    def __init__(self, cands, contexts, wrong=lambda p: False, leak=lambda p: False):
        self.by_sql = {c.sql: q for c, q in zip(cands, RuleQuestionGenerator(0).generate(cands, contexts, 0))}
        self.db_of = {q: contexts[c.db_id] for c, q in zip(cands, self.by_sql.values())}
        self.sqls, self.wrong, self.leak = [c.sql for c in cands], wrong, leak
        self.writer_prompts, self.reader_prompts = [], []

    def writer(self, prompts):
        self.writer_prompts.append(list(prompts))
        out = []
        for p in prompts:
            sql = _sql_of(p)
            if self.leak(p):
                out.append(f"Question: What does {sql} return?")
            elif self.wrong(p):
                other = self.sqls[(self.sqls.index(sql) + 1) % len(self.sqls)]
                out.append(f'"{self.by_sql[other]}"')
            else:
                out.append(self.by_sql[sql] + "\nThis question asks for ...")
        return out

    def reader(self, prompts):
        self.reader_prompts.append(list(prompts))
        qs = [p.split("Question: ")[1].split("\n")[0] for p in prompts]
        sqls = [RuleChecker().to_sql([q], [self.db_of[q]])[0] if q in self.db_of else None for q in qs]
        return ["I think:\n```sql\n" + s + ";\n```" if s else "no idea" for s in sqls]


def _verifier(setup, script, k=3, judge=None):
    contexts, ex = setup
    qgen = ModelQuestionGenerator(script.writer, fallback=RuleQuestionGenerator(0))
    return Verifier(ex, ModelChecker(script.reader), qgen, contexts, max_check_cycles=k, judge=judge)


def test_wrong_question_is_regenerated_from_the_executor_feedback(setup):
    contexts, _ = setup
    cands = _cands(setup)
    wrong = lambda p: "An earlier question for this SQL failed" not in p  # noqa: E731  (right only once told what went wrong)
    script = Script(cands, contexts, wrong=wrong)
    v = _verifier(setup, script, k=3)
    accepted, reasons = v.verify(cands)
    assert len(accepted) == len(cands) and not reasons
    assert all(c.cycles == 2 for c in accepted)
    assert len(script.writer_prompts) == 2 and len(script.reader_prompts) == 2  # batched: one call per cycle
    for c, p in zip(cands, script.writer_prompts[1]):
        first = v.audit[cands.index(c)]["attempts"][0]
        assert first["question"] not in p  # not quoted: the model would copy it
        assert f"a reader who saw only the schema wrote\n{first['check_sql']}\nwhich returned:\n" in p  # its rows
        assert "but the SQL query above returns:" in p and _sql_of(p) == c.sql
    a = v.audit[0]
    assert (
        a["status"] == "accepted"
        and a["verified_by"] == "model"
        and [x["outcome"] for x in a["attempts"]]
        == [
            "check_mismatch",
            "match",
        ]
    )
    assert {x["by"] for x in a["attempts"]} == {"model"}


@pytest.mark.parametrize("k", [1, 2, 4])
def test_always_wrong_is_dropped_after_k_cycles_with_its_reason(setup, k):
    contexts, _ = setup
    cands = _cands(setup, n=6)
    script = Script(cands, contexts, wrong=lambda p: True)
    v = _verifier(setup, script, k=k)
    accepted, reasons = v.verify(cands)
    assert accepted == [] and reasons == collections.Counter({"check_mismatch": len(cands)})
    assert len(script.writer_prompts) == k and len(script.reader_prompts) == k
    assert all(c.cycles == k for c in cands) and all(len(a["attempts"]) == k for a in v.audit)
    assert all(a["reason"] == "check_mismatch" and a["verified_by"] is None for a in v.audit)


def test_failing_checker_sql_feeds_back_the_execution_error(setup):
    contexts, _ = setup
    cands = _cands(setup, n=3)
    script = Script(cands, contexts)
    reader = lambda prompts: ["```sql\nSELECT no_such_column FROM student\n```"] * len(prompts)  # noqa: E731
    qgen = ModelQuestionGenerator(script.writer)
    v = Verifier(setup[1], ModelChecker(reader), qgen, contexts, max_check_cycles=2)
    accepted, reasons = v.verify(cands)
    assert accepted == [] and reasons == collections.Counter({"check_error": 3})
    assert all("which failed: Error (" in p and "no_such_column" in p for p in script.writer_prompts[1])


def test_judge_flags_leaks_and_unknown_columns_and_feeds_them_back(setup):
    contexts, _ = setup
    cands = _cands(setup, n=6)
    leak_once = lambda p: "An earlier question for this SQL failed" not in p  # noqa: E731
    script = Script(cands, contexts, leak=leak_once)
    v = _verifier(setup, script, k=2, judge=RuleJudge())
    accepted, reasons = v.verify(cands)
    assert len(accepted) == 6 and not reasons and all(c.cycles == 2 for c in cands)
    assert len(script.reader_prompts) == 1  # flagged questions never reach the checker
    assert all("copied SQL text" in p for p in script.writer_prompts[1])
    assert all(a["attempts"][0]["judge"] == "judge_sql_leak" for a in v.audit)

    always = Script(cands, contexts, leak=lambda p: True)
    cands = [dataclasses.replace(c, question="") for c in cands]
    accepted, reasons = _verifier(setup, always, k=2, judge=RuleJudge()).verify(cands)
    assert accepted == [] and reasons == collections.Counter({"judge_sql_leak": 6}) and not always.reader_prompts


def test_rule_judge_verdicts(setup):
    """No false alarm on 200 realizer questions (literals in quotes, snake_case schema names allowed); each leak and
    unknown-column form is caught."""
    contexts, _ = setup
    ctx, judge = contexts["university"], RuleJudge()
    cands = synthesize(ctx, 200, random.Random(0))
    qs = RuleQuestionGenerator(0).generate(cands, contexts, 0)
    assert [q for q in qs if judge.judge_one(q, ctx)] == []
    ok = ["Which students have a dept_id of 3?", 'List courses titled "SELECT * FROM x".', "Show gpa > 3.5 students."]
    assert [judge.judge_one(q, ctx) for q in ok] == [None, None, None]
    cases = {
        "SELECT name FROM student": "judge_sql_leak",
        "List student.name of students with a high gpa.": "judge_sql_leak",
        "What is the COUNT(*) of students?": "judge_sql_leak",
        "Which students have gpa >= 3.5?": "judge_sql_leak",
        "Give the names of students `WHERE gpa` is high.": "judge_sql_leak",
        "Write a new SQL query in plain English that counts the students.": "judge_sql_leak",
        "How does the sql query group the students by department?": "judge_sql_leak",
        "How many students have a student.email_address?": "judge_unknown_column",
        "List the phone_number of every instructor.": "judge_unknown_column",
    }
    assert {q: (judge.judge_one(q, ctx) or ("",))[0] for q in cases} == cases


def test_model_output_parsing():
    assert extract_sql("Here:\n```sql\nSELECT 1;\n```\nand\n```sql\nSELECT 2\n```") == "SELECT 2"
    assert extract_sql("```sql\nSELECT a FROM t WHERE b = 1") == "SELECT a FROM t WHERE b = 1"  # cut off
    assert extract_sql("<think>x</think><answer>SELECT 3</answer>") == "SELECT 3"
    assert extract_sql("SELECT 4; SELECT 5") == "SELECT 4"
    assert extract_sql("I cannot answer that.") is None and extract_sql("") is None
    assert first_question('\n**Question:** "How many students are there?"\nmore') == "How many students are there?"
    assert first_question("Q: List all courses.") == "List all courses." and first_question("  \n") == ""


# ---- the factory loop: scripted model, resume after SIGKILL ----------------------------------------------------------


def encode_writer(prompts):
    """A deterministic 'model' writing questions that carry their SQL in hex (the reader decodes them); a question
    is first written badly for a third of the SQLs, and well once the prompt holds feedback."""
    out = []
    for p in prompts:
        sql = _sql_of(p)
        bad = zlib.crc32(sql.encode()) % 3 == 0 and "An earlier question for this SQL failed" not in p
        out.append(f"Which rows answer puzzle {(sql + (' --' if bad else '')).encode().hex()}?")
    return out


def decode_reader(prompts):
    out = []
    for p in prompts:
        m = re.search(r"puzzle ([0-9a-f]+)\?", p.split("Question: ")[1])
        sql = bytes.fromhex(m.group(1)).decode() if m else ""
        out.append("```sql\n" + ("SELECT 1" if sql.endswith(" --") else sql) + "\n```")
    return out


KILL_AFTER = int(os.environ.get("FACTORY_KILL_AFTER_CALLS", "0"))
_calls = [0]


def killing_writer(prompts):
    _calls[0] += 1
    if KILL_AFTER and _calls[0] > KILL_AFTER:
        os.kill(os.getpid(), signal.SIGKILL)  # a hard kill in the middle of a batch
    return encode_writer(prompts)


def small_cfg():
    c = load_config("configs/tiny_cpu.py", [])
    paper_factory(c)  # the model-in-the-loop factory is for real models: the paper's mix and skeleton split
    f = c.factory
    f.databases, f.candidates_per_round, f.rounds, f.num_examples, f.verify_batch = (
        ("university", "sports"),
        60,
        2,
        40,
        10,
    )
    return f


def run_scripted(out, writer=encode_writer, log=lambda *_: None):
    with Executor(num_workers=1, timeout_s=5.0) as ex:
        return run_factory(small_cfg(), ex, str(out), seed=0, question_generator=ModelQuestionGenerator(writer),
                           checker=ModelChecker(decode_reader), judge=RuleJudge(), log=log)  # fmt: skip


_CHILD = """
import sys; sys.path.insert(0, {here!r})
import test_factory_model_loop as t
t.run_scripted({out!r}, writer=t.killing_writer)
"""


def test_killed_run_resumes_where_it_stopped(tmp_path):
    ref_records, ref = run_scripted(tmp_path / "ref")
    assert ref["accepted_by_cycle"].get("2", 0) > 0 and ref["accepted_by_cycle"]["1"] > 0  # the K-cycle loop ran
    assert ref["verified_by"] == {"model": ref["num_examples"]} and ref["components"]["judge"] == "rules"
    assert ref["runs"] == 1

    out = tmp_path / "killed"
    env = dict(os.environ, FACTORY_KILL_AFTER_CALLS="4")  # 4 writer calls: round 1 is partway through its batches
    proc = subprocess.run([sys.executable, "-c", _CHILD.format(here=HERE, out=str(out))], env=env, cwd=os.getcwd(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    state = json.loads((out / "state" / "factory.json").read_text())
    assert state["next_round"] == 0 and 0 < state["current"]["done"] < len(state["current"]["fresh"])
    assert not (out / "examples.jsonl").exists()

    logs = []
    records, summary = run_scripted(out, log=logs.append)
    assert any("resuming from" in x and "candidates of it done" in x for x in logs), logs
    assert summary["runs"] == 2
    strip = lambda rs: [{**r, "db_path": ""} for r in rs]  # noqa: E731
    assert strip(records) == strip(ref_records)
    for key in ("rejection_reasons", "accepted_by_cycle", "verified", "candidates", "yield_by_cycle"):
        assert summary[key] == ref[key], key
    audit = [json.loads(x) for x in (out / "verification.jsonl").read_text().splitlines()]
    assert len(audit) == len({(a["round"], a["db_id"], a["sql"]) for a in audit})  # the killed batch is not doubled
    assert sum(a["selected"] for a in audit) == summary["num_examples"]

    again_logs = []  # a finished run's state: a rerun selects the same examples without verifying anything
    records2, _ = run_scripted(out, writer=lambda p: pytest.fail("nothing left to generate"), log=again_logs.append)
    assert strip(records2) == strip(ref_records)


def test_components_from_config_refuse_bad_combinations(tmp_path):
    from agro_jax.errors import UsageError
    from data_factory.model_loop import components

    f = small_cfg()
    f.question_generator = "model"
    with pytest.raises(UsageError, match="checker='rules' parses only the rule realizer's phrasings"):
        components(f)
    f.question_generator, f.judge = "rules", "llm"
    with pytest.raises(UsageError, match="config.factory.judge='llm': expected one of auto, none, rules, model"):
        components(f)
    f.judge = "auto"
    qgen, checker, judge, policy = components(f)
    assert (qgen.name, checker.name, judge, policy) == ("rules", "rules", None, None)  # the fast default


def test_question_diversity_measures():
    from data_factory.question_stats import question_diversity

    same = question_diversity(['List the names of "A".', 'List the names of "B".', 'List the names of "A".'])
    assert same["distinct_questions"] == round(2 / 3, 4) and same["distinct_shapes"] == round(1 / 3, 4)
    assert same["distinct_openings"] == round(1 / 3, 4) and same["distinct_1"] == round(6 / 15, 4)
    varied = question_diversity(["Which students enrolled in 2020?", "Show every course title.", "How many rooms?"])
    assert varied["distinct_openings"] == 1.0 and varied["distinct_2"] == 1.0 and varied["mean_words"] == 4.0
