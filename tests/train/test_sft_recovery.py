"""Recovery trajectories (sft.recovery_fraction) on real Spider databases through the real executor: the swapped
first query fails with the database's own error, the trajectory then runs and answers the gold query, and the
rendered sequence trains on both queries but not on the observations."""

import numpy as np
import pytest
from helpers import tiny_chat_tokenizer

from agro_jax.config import load_config
from agro_jax.sql.benchmark_data import load_spider
from agro_jax.sql.executor import Executor, Query
from agro_jax.train import sft, sft_recovery


@pytest.fixture(scope="module")
def spider_trajs(spider_dir):
    config = load_config("configs/tiny_cpu.py")
    examples = load_spider(str(spider_dir))[:60]
    with Executor(num_workers=2) as ex:
        yield config, sft.build_trajectories(examples, ex, config.rollout), ex


def test_a_swapped_column_is_one_the_table_lacks_and_the_database_rejects(spider_trajs):
    _, trajs, ex = spider_trajs
    rng = np.random.default_rng(0)
    swaps = [(t, sft_recovery.swap_a_column(t["sql"], t["example"]["db_path"], rng)) for t in trajs]
    made = [(t, s) for t, s in swaps if s is not None]
    assert len(made) >= len(trajs) // 2  # most Spider golds read a column some other table lacks
    results = ex.run_many([Query(t["example"]["db_path"], wrong) for t, (wrong, _) in made])
    assert all(not r.ok for r in results), [w for (_, (w, _)), r in zip(made, results) if r.ok]
    assert all("no such column" in r.error_message for r in results)
    for t, (wrong, fix) in made:
        assert wrong != t["sql"] and fix.startswith("The query failed: ")
    assert sft_recovery.swap_a_column("SELECT 1", trajs[0]["example"]["db_path"], rng) is None  # no column
    assert sft_recovery.swap_a_column("SELEC nonsense (", trajs[0]["example"]["db_path"], rng) is None


def test_recovery_trajectories_fail_then_answer_the_gold_and_mask_observations(spider_trajs):
    config, trajs, ex = spider_trajs
    chosen = [dict(t) for t in trajs[:20]]
    made = sft_recovery.add_recovery(chosen, ex, config.rollout, 0.5, seed=0)
    recovered = [t for t in chosen if "turns" in t]
    assert made == len(recovered) and 5 <= made <= 10  # 10 picked; a swap the database accepts is dropped
    again = [dict(t) for t in trajs[:20]]
    assert sft_recovery.add_recovery(again, ex, config.rollout, 0.5, seed=0) == made  # seeded
    assert [t.get("turns") for t in again] == [t.get("turns") for t in chosen]
    for t in recovered:
        (_, wrong, err), (_, gold, obs) = t["turns"]
        assert err.startswith("Error (runtime): no such column") and gold == t["sql"] and obs == t["observation"]
    tok = tiny_chat_tokenizer()
    plain = {k: v for k, v in recovered[0].items() if k != "turns"}
    (tokens, mask), (tokens0, mask0) = sft.tokenize_trajectories([recovered[0], plain], tok, max_len=4096)
    agent, other = tok.decode(tokens[mask > 0]), tok.decode(tokens[mask == 0])
    agent0, other0 = tok.decode(tokens0[mask0 > 0]), tok.decode(tokens0[mask0 == 0])
    (_, wrong, _), _ = recovered[0]["turns"]
    assert agent.count("<sql>") == 2 == agent0.count("<sql>") + 1 and wrong in agent and "<answer>" in agent
    assert "The query failed:" in agent and "The query failed:" not in agent0
    assert other.count("<observation>") == other0.count("<observation>") + 1  # the error, never trained on
    assert "no such column" in other and "no such column" not in agent
    with pytest.raises(ValueError, match="recovery_fraction=1.5 must be in"):
        sft_recovery.add_recovery(chosen, ex, config.rollout, 1.5, seed=0)
    assert sft_recovery.add_recovery([dict(t) for t in trajs[:3]], ex, config.rollout, 0.0, seed=0) == 0
