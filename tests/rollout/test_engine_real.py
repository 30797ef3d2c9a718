"""The rollout engine on the real Qwen2.5-Coder-0.5B-Instruct (float32) for 2 Spider dev examples: greedy multi-turn
rollouts with the KV cache kept across turns equal the full-recompute path (every turn re-prefills the whole
conversation) token by token and logp by logp, and the logps equal a training-side forward of the same tokens.

Kept short: two examples with the shortest prompts (the first of network_1 and of singer, ~400 tokens), turns end at
the first newline (stop string "\\n": the model opens with a line of text), and every turn explores with one query run
by the real executor on the example's database, whose result comes back as an observation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from agro_jax.rollout import agent
from agro_jax.rollout.loop import AgentProtocol, run_rollouts
from agro_jax.rollout.sampler import Sampler
from agro_jax.sql.executor import Executor, Query

pytestmark = pytest.mark.memory_heavy  # the real model (see tests/conftest.py)
CFG = ConfigDict(dict(max_turns=2, max_prompt_len=2048, max_new_tokens_per_turn=16, max_total_len=1024,
                      temperature=0.0, top_p=1.0, top_k=0, observation_max_rows=3, observation_max_chars=200,
                      min_prompt_bucket=128, answer_format="tags", max_cache_tokens=0,
                      max_prefill_tokens=8192))  # fmt: skip
QUERY = "SELECT name FROM sqlite_master WHERE type = 'table'"


class Explore(AgentProtocol):
    def parse(self, text, turn):
        return agent.Action("sql", QUERY)


@pytest.mark.real_model
def test_real_model_multi_turn_equals_full_recompute_and_training_forward(real_qwen_dir, spider_dir):
    from flax import nnx

    from agro_jax.model.hf_io import load_hf_checkpoint
    from agro_jax.model.tokenizer import load_tokenizer
    from agro_jax.rl.grpo import sequence_logprobs
    from agro_jax.sql.benchmark_data import load_spider

    spider = load_spider(str(spider_dir), "dev")
    examples = [next(e for e in spider if e["db_id"] == db) for db in ("network_1", "singer")]
    tok = load_tokenizer(str(real_qwen_dir))
    model, mcfg = load_hf_checkpoint(str(real_qwen_dir), dtype="float32", param_dtype="float32")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    sampler = Sampler(graphdef, rest, mcfg, tok, CFG, stop_strings=("\n",))
    with Executor(num_workers=1) as ex:
        ro = run_rollouts(sampler, params, examples, ex, CFG, group_size=1, rng=jax.random.key(0), greedy=True,
                          protocol=Explore())  # fmt: skip
        # the previous path: re-prefill each whole conversation every turn
        convs = [agent.prompt_ids(tok, e["schema_text"], e["question"]) for e in examples]
        logps = [[0.0] * len(c) for c in convs]
        for turn in range(CFG.max_turns):
            out = sampler.generate(params, convs, jax.random.key(turn), temperature=0.0)
            assert all(out.stopped)
            for i in range(2):
                convs[i], logps[i] = convs[i] + out.tokens[i], logps[i] + out.logps[i]
            if turn < CFG.max_turns - 1:
                for i, res in enumerate(ex.run_many([Query(e["db_path"], QUERY) for e in examples])):
                    ids = tok.encode(Explore().observation(res)[1], add_special_tokens=False)
                    convs[i], logps[i] = convs[i] + ids, logps[i] + [0.0] * len(ids)
    assert ro.finish_reasons == ["max_turns"] * 2 and ro.num_turns_B.tolist() == [2, 2]
    assert all("observation" in tr[0] and "Error" not in tr[0]["observation"] for tr in ro.transcripts)
    for b in range(2):
        n = int(ro.valid_BxT[b].sum())
        assert ro.tokens_BxT[b, :n].tolist() == convs[b], f"row {b}"
        np.testing.assert_allclose(ro.old_logp_BxT[b, :n], logps[b], atol=2e-4, err_msg=f"row {b}")
    logp, _ = sequence_logprobs(nnx.merge(graphdef, params, rest), jnp.asarray(ro.tokens_BxT),
                                jnp.asarray(ro.valid_BxT), entropy=False, chunk=128)  # fmt: skip
    agent_BxT = ro.loss_mask_BxT > 0
    diff = np.abs(np.asarray(logp)[agent_BxT] - ro.old_logp_BxT[agent_BxT])
    assert agent_BxT.sum() >= 8 and diff.max() < 2e-4, diff.max()
