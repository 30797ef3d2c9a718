"""The agent protocol: parsing, observations from real executor results, SFT transcripts with agent masks."""

import sqlite3

import pytest

from agro_jax.model.tokenizer import train_tokenizer
from agro_jax.rollout import agent
from agro_jax.sql.executor import Executor, Query


@pytest.mark.parametrize(
    "text,kind,sql",
    [
        ("<think>a</think>\n<sql>SELECT 1</sql>", "sql", "SELECT 1"),
        ("<think>a</think>\n<answer>SELECT 2</answer>", "answer", "SELECT 2"),
        ("<think>a</think>\n<answer><sql>SELECT 3</sql>", "answer", "SELECT 3"),  # sampler stopped at the inner </sql>
        ("<think>a</think>\n<answer>```sql\nSELECT 4\n```</answer>", "answer", "SELECT 4"),
        ("<think>a</think>\n<sql>SELECT 5</sql> then <answer>SELECT 6</answer>", "sql", "SELECT 5"),  # earliest wins
        ("<think>a</think>\n<sql>  </sql>", "invalid", None),
        ("<think>a</think>\n<sql>SELECT 7", "invalid", None),  # unterminated (truncated)
        ("no tags at all", "invalid", None),
    ],
)
def test_parse_action(text, kind, sql):
    assert agent.parse_action(text) == agent.Action(kind, sql)


def test_turn_end_ends_a_row_on_answer_invalid_or_a_query_in_the_last_turn():
    query, answer, bad = (
        agent.Action("sql", "SELECT 1"),
        agent.Action("answer", "SELECT 2"),
        agent.Action("invalid", None),
    )
    assert [agent.turn_end(query, t, 3) for t in range(3)] == [None, None, "max_turns"]
    assert [agent.turn_end(answer, t, 3) for t in range(3)] == ["answer"] * 3
    assert [agent.turn_end(bad, t, 3) for t in range(3)] == ["invalid"] * 3
    assert agent.turn_end(query, 0, 1) == "max_turns"


def test_extract_final_sql_takes_last_answer():
    text = "<answer>SELECT 1</answer>\n<observation>x</observation><answer><sql>SELECT 2</sql></answer>"
    assert agent.extract_final_sql(text) == "SELECT 2"
    assert agent.extract_final_sql("<sql>SELECT 1</sql>") is None


def test_build_messages_and_errors():
    msgs = agent.build_messages("CREATE TABLE t (a)", "How many?", evidence="a is a count")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "<sql>" in msgs[0]["content"] and "<answer>" in msgs[0]["content"]
    assert "CREATE TABLE t (a)" in msgs[1]["content"] and "External knowledge: a is a count" in msgs[1]["content"]
    with pytest.raises(ValueError, match="question"):
        agent.build_messages("CREATE TABLE t (a)", "  ")


def test_format_observation_real_results(tmp_path):
    db = str(tmp_path / "x.sqlite")
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (id INTEGER, name TEXT)")
    con.executemany("INSERT INTO t VALUES (?,?)", [(i, f"n{i}") for i in range(12)] + [(99, None)])
    con.commit()
    con.close()
    with Executor(num_workers=1) as ex:
        sqls = ["SELECT id, name FROM t", "SELECT id FROM t WHERE id < 0", "SELECT nope FROM t"]
        many, none, err = ex.run_many([Query(db, s) for s in sqls])
    text = agent.format_observation(many, max_rows=3, max_chars=1000)
    assert text.splitlines() == ["id | name", "0 | n0", "1 | n1", "2 | n2", "... (13 rows in total)"]
    assert agent.format_observation(none, 3, 1000) == "id\n(0 rows)"
    etext = agent.format_observation(err, 3, 1000)
    assert etext.startswith(f"Error ({err.error_kind}):") and "no such column: nope" in etext
    assert len(agent.format_observation(many, max_rows=50, max_chars=40)) == 40


def test_render_transcript_masks_agent_pieces_only(tmp_path):
    tok = train_tokenizer([agent.SYSTEM_PROMPT, "SELECT name FROM t rows"] * 10, 300, str(tmp_path), agent.AGENT_TAGS)
    for tag in agent.AGENT_TAGS:  # single tokens -> the sampler's stop ids
        assert len(tok.encode(tag, add_special_tokens=False)) == 1
    turns = [("look", "SELECT name FROM t", "name\nA")]
    tokens, mask = agent.render_transcript(tok, schema_text="CREATE TABLE t", question="Q?", turns=turns, answer="S")
    prompt = agent.prompt_ids(tok, "CREATE TABLE t", "Q?")
    assert tokens[: len(prompt)] == prompt and mask[: len(prompt)] == [0.0] * len(prompt)
    pieces = agent.transcript_pieces(turns, "S")
    assert [p[1] for p in pieces] == [True, False, True]
    i = len(prompt)
    for text, is_agent in pieces:
        ids = tok.encode(text, add_special_tokens=False)
        assert tokens[i : i + len(ids)] == ids and mask[i : i + len(ids)] == [float(is_agent)] * len(ids)
        i += len(ids)
    assert i == len(tokens) and tok.decode(tokens[-1:]) == "</answer>"
    assert agent.extract_final_sql(tok.decode(tokens[len(prompt) :])) == "S"


FENCED = "Let's see.\n\n```sql\nSELECT 1\n```\n\nOr better:\n```sql\nSELECT a FROM t\n```"


@pytest.mark.parametrize(
    "text,strict,loose",
    [
        (FENCED, ("invalid", None), ("answer", "SELECT a FROM t")),  # the LAST ```sql block answers
        ("<answer>SELECT 2</answer> ```sql\nSELECT 3\n```", ("answer", "SELECT 2"), ("answer", "SELECT 2")),  # tags win
        ("<sql>SELECT 5</sql>", ("sql", "SELECT 5"), ("sql", "SELECT 5")),  # exploration is the same in both
        ("```sql\nSELECT 4", ("invalid", None), ("invalid", None)),  # an unterminated fence is no answer
        ("```python\nprint(1)\n```", ("invalid", None), ("invalid", None)),  # only sql / sqlite fences count
    ],
)
def test_answer_formats(text, strict, loose):
    assert agent.parse_action(text, "tags") == agent.Action(*strict)
    assert agent.parse_action(text, "tags_or_fence") == agent.Action(*loose)
    if strict[0] != "sql":
        assert agent.extract_final_sql(text, "tags") == strict[1]
        assert agent.extract_final_sql(text, "tags_or_fence") == loose[1]
    with pytest.raises(ValueError, match=r"rollout.answer_format='fence' must be one of \('tags', 'tags_or_fence'\)"):
        agent.parse_action("no tags", "fence")
