"""The rollout engine at scale (issue 12) on a tiny random Qwen and a real SQLite executor: the KV cache kept across
turns, shared group prefixes, compacted rows and budgeted chunks give exactly the rollouts of the previous
full-recompute path (every turn re-prefills the whole conversation), and the logps of a training-side forward.

The random policy never writes agent tags, so the test protocol explores on every turn (a fixed query per turn, run
by the executor: real observations) and the sampler stops turns on "e", "0" or "o" (tokens holding one end a turn:
turns of varied lengths, and the byte matcher at work); turns that find no "e" in the budget are truncated."""

import sqlite3

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from agro_jax.model.qwen import Qwen, QwenConfig, make_causal_mask, positions_from_valid
from agro_jax.model.tokenizer import train_tokenizer
from agro_jax.rollout import agent
from agro_jax.rollout.loop import AgentProtocol, plan_chunks, run_rollouts
from agro_jax.rollout.sampler import Sampler
from agro_jax.sql.executor import Executor, Query

CFG = ConfigDict(dict(max_turns=3, max_prompt_len=480, max_new_tokens_per_turn=12, max_total_len=600, temperature=1.0,
                      top_p=1.0, top_k=0, observation_max_rows=3, observation_max_chars=120, min_prompt_bucket=32,
                      answer_format="tags", max_cache_tokens=0, max_prefill_tokens=8192))  # fmt: skip
QUERIES = ["SELECT name FROM singer WHERE age > 30", "SELECT count(*) FROM singer", "SELECT * FROM nosuch"]
STOPS = ("e", "0", "o")
# float32 logps of different batch shapes / cache layouts, measured max: 4.2e-5 vs the reference path, 1.6e-4 vs the
# training forward, 3.9e-5 chunked vs one batch (the 5x weights make attention peaky); a wrong position/token is O(1)
TOL = 3e-4


class ExploreProtocol(AgentProtocol):
    def parse(self, text, turn):
        return agent.Action("sql", QUERIES[turn % len(QUERIES)])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = str(tmp_path_factory.mktemp("db") / "concert.sqlite")
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE singer (id INTEGER PRIMARY KEY, name TEXT, age INTEGER)")
    con.executemany("INSERT INTO singer VALUES (?,?,?)", [(1, "Alice", 25), (2, "Bob", 31), (3, "Carol", 42)])
    con.commit()
    con.close()
    texts = [agent.SYSTEM_PROMPT, "CREATE TABLE singer (id INTEGER, name TEXT, age INTEGER) " + " ".join(QUERIES)] * 10
    tok = train_tokenizer(texts, 300, str(tmp_path_factory.mktemp("tok")), added_tokens=agent.AGENT_TAGS)
    cfg = QwenConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=8)  # fmt: skip
    graphdef, params, rest = nnx.split(Qwen(cfg, rngs=nnx.Rngs(3)), nnx.Param, ...)
    params = jax.tree.map(lambda x: 5.0 * x, params)  # at init scale greedy decoding repeats one token
    examples = [
        {"question": q, "schema_text": "CREATE TABLE singer (id INTEGER, name TEXT, age INTEGER)" + x, "db_path": db}
        for q, x in [("Who is older than 30?", ""), ("How many singers?", " -- ages in years"),
                         ("Names of all singers?", " -- one row per singer" * 3), ("Oldest singer?", "")]
    ]  # fmt: skip
    with Executor(num_workers=1) as ex:
        yield tok, cfg, graphdef, params, rest, examples, ex


def reference_rollouts(sampler, params, examples, executor, cfg, group_size):
    """The previous path: each turn re-prefills every live conversation from scratch (Sampler.generate, greedy)."""
    tok, proto = sampler.tokenizer, ExploreProtocol()
    convs = [agent.prompt_ids(tok, e["schema_text"], e["question"]) for e in examples for _ in range(group_size)]
    logps = [[0.0] * len(c) for c in convs]
    reasons, active = ["max_turns"] * len(convs), list(range(len(convs)))
    for turn in range(cfg.max_turns):
        live = [i for i in active if len(convs[i]) < cfg.max_total_len]
        if not live:
            break
        out = sampler.generate(params, [convs[i] for i in live], jax.random.key(turn), temperature=0.0)
        asked, active = [], []
        for j, i in enumerate(live):
            room = cfg.max_total_len - len(convs[i])
            gen = out.tokens[j][:room]
            convs[i], logps[i] = convs[i] + gen, logps[i] + out.logps[j][:room]
            if len(gen) < len(out.tokens[j]) or not out.stopped[j]:
                reasons[i] = "truncated"
            elif turn == cfg.max_turns - 1:
                reasons[i] = "max_turns"
            else:
                asked.append(i)
        q = proto.parse("", turn).sql
        for i, res in zip(asked, executor.run_many([Query(examples[i // group_size]["db_path"], q) for i in asked])):
            ids = tok.encode(proto.observation(res)[1], add_special_tokens=False)[: cfg.max_total_len - len(convs[i])]
            convs[i], logps[i] = convs[i] + ids, logps[i] + [0.0] * len(ids)
            active.append(i)
    return convs, logps, reasons


def rows_of(ro):
    return [(ro.tokens_BxT[b, : ro.valid_BxT[b].sum()].tolist(), ro.old_logp_BxT[b, : ro.valid_BxT[b].sum()])
            for b in range(len(ro.final_sqls))]  # fmt: skip


def test_kv_engine_equals_full_recompute_and_training_forward(env):
    tok, mcfg, graphdef, params, rest, examples, ex = env
    sampler = Sampler(graphdef, rest, mcfg, tok, CFG, stop_strings=STOPS)
    ro = run_rollouts(sampler, params, examples, ex, CFG, group_size=2, rng=jax.random.key(0), greedy=True,
                      protocol=ExploreProtocol())  # fmt: skip
    convs, logps, reasons = reference_rollouts(sampler, params, examples, ex, CFG, 2)
    got = rows_of(ro)
    assert ro.finish_reasons == reasons
    turns = ro.num_turns_B.tolist()
    assert max(turns) == 3 and min(turns) <= 2 and "max_turns" in reasons and "truncated" in reasons  # varied rows
    assert sum("observation" in t for tr in ro.transcripts for t in tr) >= 4  # real executor results were fed back
    for b, (toks, lp) in enumerate(got):
        assert toks == convs[b], f"row {b}: tokens differ from the full-recompute path"
        np.testing.assert_allclose(lp, logps[b], atol=TOL, err_msg=f"row {b}")
    # each distinct prompt prefilled once for its 2 rows; every conversation token encoded at most once
    assert ro.stats["prefill_tokens"] == sum(ro.prompt_lens[::2])
    after_prompt = sum(len(t) - n - 1 for (t, _), n in zip(got, ro.prompt_lens))  # a row's last token is never fed
    assert ro.stats["extend_tokens"] + ro.stats["decode_fed"] == after_prompt
    assert ro.stats["extend_tokens"] == sum(t.get("observation_tokens", -1) + 1 for tr in ro.transcripts for t in tr)
    assert [rb for rb, _ in ro.stats["layouts"]][0] == 8 and min(rb for rb, _ in ro.stats["layouts"]) < 8  # compacted
    # the training-side forward of the same tokens: argmax (greedy) and logp at every agent token
    from agro_jax.rl.grpo import sequence_logprobs

    model = nnx.merge(graphdef, params, rest)
    tokens, valid = jnp.asarray(ro.tokens_BxT), jnp.asarray(ro.valid_BxT)
    logp, _ = sequence_logprobs(model, tokens, valid, entropy=False)
    logits, _ = model(tokens, positions_from_valid(valid), make_causal_mask(valid))
    agent_BxT = ro.loss_mask_BxT > 0
    np.testing.assert_allclose(np.asarray(logp)[agent_BxT], ro.old_logp_BxT[agent_BxT], atol=TOL)
    greedy = np.asarray(jnp.argmax(logits, -1))[:, :-1]
    assert np.all(greedy[agent_BxT[:, 1:]] == ro.tokens_BxT[:, 1:][agent_BxT[:, 1:]])


def test_budgeted_chunks_equal_one_batch_when_sampling(env):
    tok, mcfg, graphdef, params, rest, examples, ex = env
    sampler = Sampler(graphdef, rest, mcfg, tok, CFG, stop_strings=STOPS)
    small = ConfigDict(dict(CFG.to_dict(), max_cache_tokens=2 * 1024, max_prefill_tokens=512))  # 2 rows of 1024
    assert len(plan_chunks(4, 2, sampler, params, small)) == 4
    kw = dict(group_size=2, rng=jax.random.key(5), protocol=ExploreProtocol())
    one = run_rollouts(sampler, params, examples, ex, CFG, **kw)
    chunked = run_rollouts(sampler, params, examples, ex, small, **kw)
    assert chunked.stats["chunks"] == 4 and one.stats["chunks"] == 1
    assert one.finish_reasons == chunked.finish_reasons
    for (ta, la), (tb, lb) in zip(rows_of(one), rows_of(chunked)):
        assert ta == tb
        np.testing.assert_allclose(la, lb, atol=TOL)
    assert len({tuple(t) for t, _ in rows_of(one)[:2]}) == 2  # sampled: the two rows of a group differ
    with pytest.raises(ValueError, match="less than one group of 2"):
        plan_chunks(4, 2, sampler, params, ConfigDict(dict(CFG.to_dict(), max_cache_tokens=2047)))


def test_sampled_logps_are_the_tempered_policy_grpo_trains(env):
    """At rollout temperature 0.7 the sampler's logp of every agent token equals the training forward's at the same
    temperature (GRPO's first ratio is 1), and differs from the temperature-1 policy's."""
    from agro_jax.rl.grpo import logp_temperature, sequence_logprobs

    tok, mcfg, graphdef, params, rest, examples, ex = env
    cfg = ConfigDict(dict(CFG.to_dict(), temperature=0.7))
    ro = run_rollouts(Sampler(graphdef, rest, mcfg, tok, cfg, stop_strings=STOPS), params, examples, ex, cfg,
                      group_size=2, rng=jax.random.key(9), protocol=ExploreProtocol())  # fmt: skip
    model, agent_BxT = nnx.merge(graphdef, params, rest), ro.loss_mask_BxT > 0
    tokens, valid = jnp.asarray(ro.tokens_BxT), jnp.asarray(ro.valid_BxT)
    at = lambda t: np.asarray(sequence_logprobs(model, tokens, valid, entropy=False, temperature=t)[0])[agent_BxT]  # noqa: E731
    assert logp_temperature(cfg) == 0.7 and agent_BxT.sum() >= 20
    np.testing.assert_allclose(at(0.7), ro.old_logp_BxT[agent_BxT], atol=TOL)
    assert np.abs(at(1.0) - ro.old_logp_BxT[agent_BxT]).max() > 0.05


def test_prompt_over_max_prompt_len_is_skipped_and_counted(env):
    tok, mcfg, graphdef, params, rest, examples, ex = env
    sampler = Sampler(graphdef, rest, mcfg, tok, CFG, stop_strings=STOPS)
    lens = [len(agent.prompt_ids(tok, e["schema_text"], e["question"])) for e in examples]
    cfg = ConfigDict(dict(CFG.to_dict(), max_prompt_len=sorted(lens)[1]))
    ro = run_rollouts(sampler, params, examples, ex, cfg, group_size=1, rng=jax.random.key(0), greedy=True,
                      protocol=ExploreProtocol())  # fmt: skip
    over = [n > cfg.max_prompt_len for n in lens]
    assert sum(over) == 2 and ro.stats["prompts_too_long"] == 2
    for b, o in enumerate(over):
        assert (ro.finish_reasons[b] == "prompt_too_long") == o
        if o:  # never cut: the row is its whole prompt, nothing generated
            assert ro.valid_BxT[b].sum() == lens[b] and ro.loss_mask_BxT[b].sum() == 0 and ro.num_turns_B[b] == 0


def test_prompt_without_room_to_generate_is_truncated_and_never_prefilled(env):
    """A prompt within max_prompt_len but at least max_total_len tokens long has no slot left to generate into: it
    ends "truncated" with no turn and is never prefilled (it could overflow the chunk's slot_cap slots)."""
    tok, mcfg, graphdef, params, rest, examples, ex = env
    lens = [len(agent.prompt_ids(tok, e["schema_text"], e["question"])) for e in examples]
    cfg = ConfigDict(dict(CFG.to_dict(), max_total_len=sorted(lens)[2]))
    sampler = Sampler(graphdef, rest, mcfg, tok, cfg, stop_strings=STOPS)
    ro = run_rollouts(sampler, params, examples, ex, cfg, group_size=1, rng=jax.random.key(0), greedy=True,
                      protocol=ExploreProtocol())  # fmt: skip
    full = [n >= cfg.max_total_len for n in lens]
    assert sum(full) == 2 and ro.stats["prompts_too_long"] == 0
    assert ro.stats["prefill_tokens"] == sum(n for n, f in zip(lens, full) if not f)
    for b, f in enumerate(full):
        assert (ro.finish_reasons[b] == "truncated" and ro.num_turns_B[b] == 0) == f
        if f:
            assert ro.valid_BxT[b].sum() == lens[b] and ro.loss_mask_BxT[b].sum() == 0 and not ro.transcripts[b]


def test_eval_report_keeps_transcripts_and_counts_skipped_prompts(env, tmp_path):
    import json

    from agro_jax.eval.evaluate import evaluate_policy, write_report
    from agro_jax.rollout.loop import greedy_generate_fn

    tok, mcfg, graphdef, params, rest, examples, ex = env
    lens = [len(agent.prompt_ids(tok, e["schema_text"], e["question"])) for e in examples]
    cfg = ConfigDict(dict(CFG.to_dict(), max_prompt_len=sorted(lens)[1]))
    sampler = Sampler(graphdef, rest, mcfg, tok, cfg, stop_strings=STOPS)
    golds = [dict(e, sql=QUERIES[0], db_id="concert") for e in examples]
    gen = greedy_generate_fn(sampler, params, ex, cfg, protocol=ExploreProtocol())
    report = evaluate_policy(golds, gen, ex, mode="bird", batch_size=2, answer_format="tags")
    assert report["answer_format"] == "tags" and report["agent"]["prompts_too_long"] == 2
    assert report["agent"]["prompt_tokens"]["max"] == max(lens)
    for row, n in zip(report["per_example"], lens):
        tr = row["transcript"]
        assert tr["prompt_tokens"] == n and set(tr) >= {"finish_reason", "num_turns", "generated_tokens", "turns"}
        assert (tr["finish_reason"] == "prompt_too_long") == (n > cfg.max_prompt_len)
        assert tr["generated_tokens"] == sum(t["tokens"] for t in tr["turns"])
        assert all(set(t) >= {"text", "tokens", "stop"} for t in tr["turns"])
    assert any("observation" in t for row in report["per_example"] for t in row["transcript"]["turns"])
    jpath, mpath = write_report(report, str(tmp_path), "x")
    assert json.load(open(jpath))["per_example"][0]["transcript"] == report["per_example"][0]["transcript"]
    md = open(mpath).read()
    assert "answer format: `tags`" in md and "2 prompts over rollout.max_prompt_len skipped" in md
    assert "### no_answer (prompt_too_long) (2)" in md
    for section in md.split("### ")[1:]:  # at most two examples under each failure outcome
        assert 1 <= section.count("\n- example ") <= 2


def test_compiles_stay_bounded_across_20_varied_steps(env):
    """20 rollout steps like training: new params every step, 1-4 prompts, group size 1-3, sampled or greedy. The
    shapes come from short bucket lists (rows: powers of two; slots and extension lengths: powers of two), so the
    programs compile a bounded number of times and late steps reuse them."""
    tok, mcfg, graphdef, params, rest, examples, ex = env
    cfg = ConfigDict(dict(CFG.to_dict(), max_turns=2, max_new_tokens_per_turn=6))
    sampler = Sampler(graphdef, rest, mcfg, tok, cfg, stop_strings=STOPS)
    rng = np.random.default_rng(0)
    counts = []
    for step in range(20):
        params = jax.tree.map(lambda x: x * 1.0001, params)  # fresh params every step, like training
        exs = [examples[i] for i in rng.choice(4, int(rng.integers(1, 5)), replace=False)]
        run_rollouts(sampler, params, exs, ex, cfg, group_size=int(rng.integers(1, 4)), rng=jax.random.key(step),
                     greedy=bool(step % 2), protocol=ExploreProtocol())  # fmt: skip
        counts.append(dict(sampler.traces))
    # measured: prefill 3, decode 5, extend 3, rows 13; totals by step 4 7 10 12 16 16 18 18 18 21 | 21 ... 24
    last, total = counts[-1], [sum(c.values()) for c in counts]
    assert last["prefill"] <= 3  # prompt rows per call {1, 2, 4} x one prompt bucket
    assert last["decode"] <= 6 and last["extend"] <= 6  # rows {1, 2, 4, 8, 16} x slots (x extension lengths)
    assert total[-1] <= 30 and total[-1] - total[9] <= 5  # late steps reuse the programs
