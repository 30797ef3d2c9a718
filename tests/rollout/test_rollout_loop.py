"""The whole multi-turn loop with the REAL sampler loop, executor and rewards on a real SQLite DB; the policy is a
scripted logits source that forces fixed transcripts token by token (it reads the context back from its 'cache')."""

import sqlite3

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from agro_jax.model.tokenizer import train_tokenizer
from agro_jax.rollout import agent
from agro_jax.rollout.loop import run_rollouts
from agro_jax.rollout.sampler import Sampler
from agro_jax.sql.executor import Executor, Query

ROLLOUT_CFG = ConfigDict(
    {
        "max_turns": 3,
        "max_prompt_len": 512,
        "max_new_tokens_per_turn": 48,
        "max_total_len": 1024,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "observation_max_rows": 5,
        "observation_max_chars": 300,
        "min_prompt_bucket": 16,
    }
)
REWARD_CFG = ConfigDict({"correct": 1.0, "wrong": 0.0, "bad_format": -1.0, "compare_mode": "bird"})
EXPLORE = "SELECT name FROM singer WHERE age > 30 ORDER BY name"
GOLD = "SELECT name FROM singer WHERE age > 30"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = [
        agent.SYSTEM_PROMPT,
        "SELECT name FROM singer WHERE age > 30 ORDER BY name; singers older than thirty; Error (sql_error) no such",
        "CREATE TABLE singer (id INTEGER, name TEXT, age INTEGER) Alice Bob Carol Dave 25 31 42 57",
    ] * 20
    return train_tokenizer(texts, 400, str(tmp_path_factory.mktemp("tok")), added_tokens=agent.AGENT_TAGS)


@pytest.fixture(scope="module")
def db_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("db") / "concert.sqlite")
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE singer (id INTEGER PRIMARY KEY, name TEXT, age INTEGER)")
    con.executemany("INSERT INTO singer VALUES (?,?,?)", [(1, "Alice", 25), (2, "Bob", 31), (3, "Carol", 42)])
    con.commit()
    con.close()
    return path


class ScriptedPolicy:
    """model_fn/init_cache for Sampler: the 'cache' holds the token id of every slot, and the logits force the next
    token of the script of whichever prompt the context starts with (agent turns; observations are skipped)."""

    def __init__(self, tokenizer, scripts: dict[tuple, list[str]], vocab: int):
        enc = lambda t: tokenizer.encode(t, add_special_tokens=False)  # noqa: E731
        self.scripts = {p: [enc(t) for t in turns] for p, turns in scripts.items()}
        self.obs_end = tokenizer.convert_tokens_to_ids("</observation>")
        self.tail = len(tokenizer.encode("\n", add_special_tokens=False))  # observation_text ends "</observation>\n"
        self.eos, self.vocab = int(tokenizer.eos_token_id), vocab

    def init_cache(self, batch, max_len):
        return jnp.zeros((batch, max_len), jnp.int32)

    def next_token(self, ctx: list[int]) -> int:
        prompt = next((p for p in self.scripts if tuple(ctx[: len(p)]) == p), None)
        if prompt is None:  # bucket filler row
            return self.eos
        rest = ctx[len(prompt) :]
        for turn in self.scripts[prompt]:
            if len(rest) < len(turn):
                assert rest == turn[: len(rest)], "context diverged from the script"
                return turn[len(rest)]
            rest = rest[len(turn) :]
            if self.obs_end not in rest:  # turn finished: the sampler feeds finished rows pads, ignored
                return self.eos
            rest = rest[rest.index(self.obs_end) + 1 + self.tail :]
        return self.eos

    def _host(self, cache_BxS, valid_BxS):
        cache_BxS, valid_BxS = np.asarray(cache_BxS), np.asarray(valid_BxS)  # numpy: per-row jax ops would dispatch
        return np.asarray([self.next_token(c[v].tolist()) for c, v in zip(cache_BxS, valid_BxS)], np.int32)

    def __call__(self, params, tokens_BxT, positions_BxT, mask_BxTxS, cache, cache_index, last_B):
        """Writes each row's tokens at its own slots; the logits at query last_B[b] force the script's next token."""
        b, t = tokens_BxT.shape
        slots_BxT = jnp.asarray(cache_index)[:, None] + jnp.arange(t)[None, :]
        cache = cache.at[jnp.arange(b)[:, None], slots_BxT].set(tokens_BxT, mode="drop")
        valid_BxS = jnp.take_along_axis(mask_BxTxS, last_B[:, None, None], axis=1)[:, 0]
        nxt_B = jax.pure_callback(self._host, jax.ShapeDtypeStruct((b,), jnp.int32), cache, valid_BxS)
        return jnp.where(jnp.arange(self.vocab)[None] == nxt_B[:, None], 30.0, -30.0), cache


def test_scripted_multi_turn_rollout_masks_observations_rewards(tokenizer, db_path):
    examples = [
        {"question": q, "schema_text": "CREATE TABLE singer (id INTEGER, name TEXT, age INTEGER)", "db_path": db_path}
        for q in ("Singers older than 30?", "Names of singers over thirty?", "Who is older than 30?")
    ]
    for ex in examples:
        ex["sql"] = GOLD
    scripts_by_q = [
        [agent.turn_text("look first", EXPLORE), agent.answer_text("rows fit", EXPLORE)],  # right (set match)
        [agent.turn_text("try", "SELECT * FROM nosuch"), agent.answer_text("guess", "SELECT name FROM singer")],
        ["<think>no idea</think> I give up."],  # bad format: EOS without any tag
    ]
    prompts = [tuple(agent.prompt_ids(tokenizer, ex["schema_text"], ex["question"])) for ex in examples]
    policy = ScriptedPolicy(tokenizer, dict(zip(prompts, scripts_by_q)), len(tokenizer))
    sampler = Sampler(None, None, None, tokenizer, ROLLOUT_CFG, model_fn=policy, init_cache=policy.init_cache)
    with Executor(num_workers=2) as ex:
        ro = run_rollouts(
            sampler, {}, examples, ex, ROLLOUT_CFG, group_size=2, rng=jax.random.key(0), reward_cfg=REWARD_CFG
        )
        obs = [ex.run(Query(db_path, EXPLORE)), ex.run(Query(db_path, "SELECT * FROM nosuch"))]

    assert ro.group_ids_B.tolist() == [0, 0, 1, 1, 2, 2]
    assert ro.rewards_B.tolist() == [1.0, 1.0, 0.0, 0.0, -1.0, -1.0]
    assert ro.final_sqls == [EXPLORE, EXPLORE, "SELECT name FROM singer", "SELECT name FROM singer", None, None]
    assert ro.num_turns_B.tolist() == [2, 2, 2, 2, 1, 1]
    assert ro.finish_reasons == ["answer", "answer", "answer", "answer", "invalid", "invalid"]
    bodies = [agent.format_observation(r, 5, 300) for r in obs]
    assert "Bob" in bodies[0] and "Carol" in bodies[0] and "Alice" not in bodies[0]  # real DB rows
    assert bodies[1].startswith("Error") and "nosuch" in bodies[1]
    assert "<observation>\nname\nBob\nCarol\n</observation>" in ro.texts[0]

    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    for b in range(6):
        g = ro.group_ids_B[b]
        turns = scripts_by_q[g]
        exp_tok, exp_mask = list(prompts[g]), [0.0] * len(prompts[g])
        for k, turn in enumerate(turns):
            ids = enc(turn) + ([tokenizer.eos_token_id] if g == 2 else [])
            exp_tok, exp_mask = exp_tok + ids, exp_mask + [1.0] * len(ids)
            if k < len(turns) - 1:
                ids = enc(agent.observation_text(bodies[g]))
                exp_tok, exp_mask = exp_tok + ids, exp_mask + [0.0] * len(ids)
        n = len(exp_tok)
        assert ro.tokens_BxT[b, :n].tolist() == exp_tok, f"row {b} tokens"
        assert ro.loss_mask_BxT[b].tolist() == exp_mask + [0.0] * (ro.tokens_BxT.shape[1] - n), f"row {b} mask"
        assert ro.valid_BxT[b].sum() == n and ro.valid_BxT[b, :n].all()
        # forced logits: agent tokens have logp ~0 (not exactly: 30 vs -30 over the vocab), everything else exactly 0
        lp = ro.old_logp_BxT[b]
        assert np.all(lp[np.asarray(ro.loss_mask_BxT[b]) == 0] == 0.0)
        assert np.all(np.abs(lp[: len(exp_mask)][np.asarray(exp_mask) == 1]) < 1e-3)
    assert set(ro.timings) == {"generate", "execute", "reward"}


def test_truncation_and_max_turns_score_as_no_answer(tokenizer, db_path):
    ex = {"question": "Q?", "schema_text": "CREATE TABLE singer (id INTEGER)", "db_path": db_path, "sql": GOLD}
    prompt = tuple(agent.prompt_ids(tokenizer, ex["schema_text"], ex["question"]))
    explore = agent.turn_text("again", "SELECT 1")
    policy = ScriptedPolicy(tokenizer, {prompt: [explore, explore, explore]}, len(tokenizer))
    cfg = ConfigDict(dict(ROLLOUT_CFG.to_dict(), max_turns=2))
    sampler = Sampler(None, None, None, tokenizer, cfg, model_fn=policy, init_cache=policy.init_cache)
    with Executor(num_workers=1) as exe:
        ro = run_rollouts(sampler, {}, [ex], exe, cfg, group_size=1, rng=jax.random.key(1), reward_cfg=REWARD_CFG)
        assert ro.finish_reasons == ["max_turns"] and ro.final_sqls == [None] and ro.rewards_B.tolist() == [-1.0]
        assert ro.num_turns_B.tolist() == [2]
        short = ConfigDict(dict(cfg.to_dict(), max_total_len=len(prompt) + 5))
        ro = run_rollouts(sampler, {}, [ex], exe, short, group_size=1, rng=jax.random.key(1), reward_cfg=REWARD_CFG)
    assert ro.finish_reasons == ["truncated"] and ro.rewards_B.tolist() == [-1.0]
    assert ro.tokens_BxT.shape[1] == len(prompt) + 5 and ro.loss_mask_BxT.sum() == 5
