"""compute_rewards: match / wrong / bad format on a real Spider database through the executor pool."""

import numpy as np
import pytest
from ml_collections import ConfigDict

from agro_jax.rl.rewards import compute_rewards, sql_parses
from agro_jax.sql.executor import Executor

CFG = ConfigDict({"correct": 1.0, "wrong": 0.0, "bad_format": -1.0, "compare_mode": "bird"})


@pytest.fixture(scope="module")
def executor():
    with Executor(num_workers=2, timeout_s=2.0) as ex:
        yield ex


def test_rewards_per_outcome(spider_dir, executor):
    db = str(spider_dir / "database/concert_singer/concert_singer.sqlite")
    gold = "SELECT count(*) FROM singer"
    preds = [
        "SELECT count(*) FROM singer",  # match
        "select COUNT(singer_id) from singer",  # different SQL, same result
        "SELECT count(*) + 1 FROM singer",  # wrong result
        "SELECT count(*) FROM nope",  # runtime error
        None,  # the agent never answered
        "SELEC count(* FROM",  # unparseable
        "",  # empty
        "DELETE FROM singer",  # parses, denied by the sandbox
        "SELECT 1; SELECT 2",  # two statements
    ]
    rewards, infos = compute_rewards(preds, [gold] * len(preds), [db] * len(preds), executor, CFG)
    assert rewards.dtype == np.float32
    np.testing.assert_array_equal(rewards, [1, 1, 0, 0, -1, -1, -1, 0, -1])
    assert [i["reason"] for i in infos] == [
        "match",
        "match",
        "mismatch",
        "pred_error",
        "no_answer",
        "unparseable",
        "unparseable",
        "pred_error",
        "unparseable",
    ]
    assert infos[3]["error_kind"] == "runtime" and "no such table" in infos[3]["error_message"]
    assert infos[7]["error_kind"] == "denied"
    assert all(i["matched"] == (r == 1) for i, r in zip(infos, rewards))


def test_spider_mode_and_config_values(spider_dir, executor):
    db = str(spider_dir / "database/concert_singer/concert_singer.sqlite")
    cfg = ConfigDict({"correct": 2.0, "wrong": -0.5, "bad_format": -3.0, "compare_mode": "spider"})
    gold = "SELECT name FROM singer ORDER BY age"
    preds = ["SELECT name FROM singer ORDER BY age", "SELECT name FROM singer", None]
    rewards, _ = compute_rewards(preds, [gold] * 3, [db] * 3, executor, cfg)
    np.testing.assert_array_equal(rewards, [2.0, -0.5, -3.0])
    bird, _ = compute_rewards(preds, [gold] * 3, [db] * 3, executor, dict(CFG, compare_mode="bird"))
    np.testing.assert_array_equal(bird, [1, 1, -1])  # BIRD ignores order


def test_bad_arguments(executor):
    with pytest.raises(ValueError, match="same length"):
        compute_rewards(["SELECT 1"], [], [], executor, CFG)
    assert sql_parses("SELECT a FROM t WHERE b IN (SELECT c FROM u)") == (True, "")
    assert not sql_parses("SELECT FROM WHERE")[0]
