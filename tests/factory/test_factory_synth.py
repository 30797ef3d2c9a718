"""SQL-first synthesis, the question realizer and the rule-based question->SQL checker."""

import collections
import random
import sqlite3

import pytest
import sqlglot

from data_factory.checker import ModelChecker, RuleChecker
from data_factory.databases import DOMAINS, build_databases
from data_factory.synth_question import ModelQuestionGenerator, RuleQuestionGenerator, realize
from data_factory.synth_sql import LEVELS, DbContext, difficulty, render_sql, skeleton, synthesize
from data_factory.templates import BY_NAME, TEMPLATES


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    paths = build_databases(str(tmp_path_factory.mktemp("dbs")), DOMAINS, seed=0)
    return {name: DbContext(p) for name, p in paths.items()}


@pytest.fixture(scope="module")
def cands(contexts):
    rng = random.Random(0)
    return [c for ctx in contexts.values() for c in synthesize(ctx, 120, rng)]


def test_every_template_and_level_is_synthesized_and_runs(cands, contexts):
    assert {c.template for c in cands} == {t.name for t in TEMPLATES}
    assert set(collections.Counter(c.difficulty for c in cands)) == set(LEVELS)
    conns = {n: sqlite3.connect(ctx.db_path) for n, ctx in contexts.items()}
    for c in cands:
        sqlglot.parse_one(c.sql, read="sqlite")  # valid for sqlglot ...
        conns[c.db_id].execute(c.sql).fetchall()  # ... and for SQLite
        assert c.difficulty == difficulty(c.sql) and c.skeleton == skeleton(c.sql)
    # The nominal level of each template matches the AST-computed difficulty.
    for c in cands:
        assert c.difficulty == BY_NAME[c.template].level, (c.template, c.sql)


def test_literals_come_from_the_data(cands, contexts):
    checked = 0
    for c in cands:
        if c.template == "filter_select" and c.slots["op"] in ("=", "!="):
            t, col = c.slots["t1"], c.slots["c2"]
            assert c.slots["v"] in contexts[c.db_id].values(t, col)
            checked += 1
    assert checked >= 5


def test_skeleton_masks_literals_and_identifiers():
    a = skeleton("SELECT name FROM student WHERE gpa > 3.5 LIMIT 3")
    b = skeleton("SELECT title FROM course WHERE credits > 4 LIMIT 5")
    assert a == b == "SELECT _ FROM _ WHERE _ > ? LIMIT ?"
    assert skeleton("SELECT name FROM student WHERE gpa > 3.5", mask_identifiers=False) == (
        "SELECT name FROM student WHERE gpa > ?"
    )
    assert difficulty("SELECT a FROM t") == "simple"
    assert difficulty("SELECT t.a, COUNT(*) FROM t JOIN u ON t.x = u.y GROUP BY t.a") == "complex"


def test_realizer_styles_and_checker_round_trip(cands, contexts):
    gen, checker = RuleQuestionGenerator(0), RuleChecker()
    same = 0
    for attempt in (0, 1):
        qs = gen.generate(cands, contexts, attempt)
        assert all(q and q[0].isupper() and "{" not in q for q in qs)
        sqls = checker.to_sql(qs, [contexts[c.db_id] for c in cands])
        same += sum(s == c.sql for s, c in zip(sqls, cands))
    assert same >= 0.97 * 2 * len(cands)  # the checker recovers the exact SQL from the question alone
    # Different attempts use different phrasings for templates with several of them.
    q0, q1 = gen.generate(cands[:40], contexts, 0), gen.generate(cands[:40], contexts, 1)
    assert sum(a != b for a, b in zip(q0, q1)) >= 30


def test_checker_catches_an_ambiguous_phrasing(contexts):
    """'Which teams have no games?' does not say home or away team: the checker picks one FK, so for the other
    the regenerated SQL differs (the verifier then rephrases with the explicit style)."""
    ctx = contexts["sports"]
    t = BY_NAME["not_in"]
    checker = RuleChecker()
    outcomes = {}
    for col in ("home_team_id", "away_team_id"):
        slots = {"fk": col, "t1": "game", "t2": "team", "c2": "city"}
        lossy = realize(t, slots, ctx.lex, style=1, rng=random.Random(0))
        explicit = realize(t, slots, ctx.lex, style=0, rng=random.Random(0))
        assert lossy == "Which teams have no games? Give their city."
        outcomes[col] = (checker.to_sql([lossy], [ctx])[0] == render_sql(t, slots, ctx),
                         checker.to_sql([explicit], [ctx])[0] == render_sql(t, slots, ctx))  # fmt: skip
    assert sorted(o[0] for o in outcomes.values()) == [False, True]  # exactly one reading of the lossy question
    assert all(o[1] for o in outcomes.values())  # the explicit phrasing is exact for both


def test_model_backed_generator_and_checker_use_generate_fn(cands, contexts):
    rule_gen, rule_chk = RuleQuestionGenerator(0), RuleChecker()
    sub = cands[:10]
    calls = []

    def question_fn(prompts):  # a real small "model": writes the rule question for the SQL in the prompt
        calls.append(len(prompts))
        by_sql = {c.sql: q for c, q in zip(sub, rule_gen.generate(sub, contexts, 0))}
        return ["" if i == 0 else by_sql[p.split("SQL: ")[1].split("\n")[0]] + "\nextra line" for i, p in
                enumerate(prompts)]  # fmt: skip

    qs = ModelQuestionGenerator(question_fn).generate(sub, contexts, 0)
    assert calls == [10] and all(qs) and qs[1:] == rule_gen.generate(sub, contexts, 0)[1:]  # [0] fell back

    def sql_fn(prompts):  # answers in the agent protocol's tags
        out = []
        for p in prompts:
            q = p.split("Question: ")[1].split("\n")[0]
            db = next(c.db_id for c, qq in zip(sub, qs) if qq == q)
            out.append(f"<think>parse</think><answer>{rule_chk.to_sql([q], [contexts[db]])[0]}</answer>")
        return out

    sqls = ModelChecker(sql_fn).to_sql(qs, [contexts[c.db_id] for c in sub])
    assert sqls == [c.sql for c in sub]
    with pytest.raises(ValueError, match="returned 0 completions for 10 prompts"):
        ModelChecker(lambda p: []).to_sql(qs, [contexts[c.db_id] for c in sub])
