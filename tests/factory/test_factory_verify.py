"""Verification: accepted examples execute deterministically; corrupted ones are rejected with the right reason;
the generation-as-check loop regenerates questions up to K cycles."""

import collections
import dataclasses
import random

import pytest

from agro_jax.sql.executor import Executor, Query
from data_factory.checker import ModelChecker, RuleChecker
from data_factory.databases import build_databases
from data_factory.synth_question import RuleQuestionGenerator
from data_factory.synth_sql import Candidate, DbContext, difficulty, skeleton, synthesize
from data_factory.verify import Verifier, static_reason


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    paths = build_databases(str(tmp_path_factory.mktemp("dbs")), ("university", "sports"), seed=0)
    contexts = {n: DbContext(p) for n, p in paths.items()}
    with Executor(num_workers=2, timeout_s=5.0) as ex:
        yield contexts, ex


def _verifier(setup, checker=None, k=3, **kw):
    contexts, ex = setup
    return Verifier(ex, checker or RuleChecker(), RuleQuestionGenerator(0), contexts, max_check_cycles=k, **kw)


def _raw(ctx, sql, question="", template=""):
    """An example without a spec (as imported data would be): its question cannot be regenerated."""
    return Candidate(ctx.db_id, ctx.db_path, template, {}, sql, difficulty(sql), skeleton(sql), question=question)


def test_accepted_examples_execute_and_equal_their_rerun(setup):
    contexts, ex = setup
    rng = random.Random(0)
    cands = [c for ctx in contexts.values() for c in synthesize(ctx, 80, rng)]
    accepted, reasons = _verifier(setup).verify(cands)
    assert len(accepted) >= 0.6 * len(cands)
    assert sum(reasons.values()) + len(accepted) == len(cands)
    first = ex.run_many([Query(c.db_path, c.sql) for c in accepted])
    second = ex.run_many([Query(c.db_path, c.sql) for c in accepted])
    for c, a, b in zip(accepted, first, second):
        assert a.ok and a.rows and a.rows == b.rows, c.sql
        assert c.question and 1 <= c.cycles <= 3


def test_corrupted_examples_are_rejected_with_the_right_reason(setup):
    contexts, _ = setup
    u = contexts["university"]
    good_sql = "SELECT student.name FROM student WHERE student.gpa > 3.9"
    good_q = "List the name of students whose gpa is greater than 3.9."
    cases = {
        "exec_error": _raw(u, "SELECT student.no_such_col FROM student WHERE student.gpa > 3.9", good_q),
        "nondeterministic": _raw(u, "SELECT name FROM student ORDER BY RANDOM() LIMIT 3", good_q),
        "nondeterministic_limit": _raw(u, "SELECT name FROM student LIMIT 5", good_q),
        "empty_result": _raw(u, "SELECT name FROM student WHERE gpa > 10", good_q),
        "null_result": _raw(u, "SELECT AVG(gpa) FROM student WHERE gpa > 10", good_q),
        "too_many_rows": _raw(u, "SELECT * FROM enrollment", good_q),
        "ambiguous_limit": _raw(u, "SELECT name FROM student ORDER BY enroll_year DESC LIMIT 1", good_q),
        "check_mismatch": _raw(u, good_sql, "How many students have a gpa that is at least 2.5?"),
        "check_unparseable": _raw(u, good_sql, "Tell me something nice about the library."),
    }
    # Nondeterminism that no static rule sees (randomblob is not RANDOM()): caught by the repeated execution.
    cases["nondeterministic_exec"] = _raw(u, "SELECT name FROM student ORDER BY randomblob(8) LIMIT 3", good_q)
    assert static_reason(cases["nondeterministic_exec"].sql) is None
    for name, cand in cases.items():
        accepted, reasons = _verifier(setup).verify([cand])
        want = "nondeterministic" if name == "nondeterministic_exec" else name
        assert accepted == [] and reasons == collections.Counter({want: 1}), (name, reasons)
    accepted, reasons = _verifier(setup).verify([_raw(u, good_sql, good_q)])  # the uncorrupted twin passes
    assert len(accepted) == 1 and not reasons


def test_mismatched_question_with_spec_is_regenerated_then_accepted(setup):
    contexts, _ = setup
    cands = synthesize(contexts["sports"], 30, random.Random(3))[:2]
    assert cands[0].sql != cands[1].sql
    q = RuleQuestionGenerator(0).generate(cands, contexts, 0)
    cands[0].question, cands[1].question = q[1], q[0]  # swapped: each question describes the other SQL
    accepted, reasons = _verifier(setup).verify(cands)
    assert len(accepted) == 2 and not reasons
    assert all(c.cycles == 2 for c in accepted)  # cycle 1 failed, the regenerated question passed


@pytest.mark.parametrize("k", [1, 3])
def test_check_gives_up_after_k_cycles(setup, k):
    contexts, _ = setup
    calls = []

    def wrong_sql(prompts):  # a "model" that always answers with the wrong query
        calls.append(len(prompts))
        return ["<answer>SELECT 42</answer>"] * len(prompts)

    cands = [dataclasses.replace(c) for c in synthesize(contexts["university"], 20, random.Random(1))]
    accepted, reasons = _verifier(setup, ModelChecker(wrong_sql), k=k).verify(cands)
    assert accepted == [] and reasons["check_mismatch"] > 0
    assert len(calls) == k  # one checker call per cycle, for all pending candidates at once
    assert all(c.cycles == k for c in cands if c.question)
