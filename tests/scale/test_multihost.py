"""Multi-host correctness: 2 processes x 4 CPU devices (jax.distributed over localhost, gloo collectives) must
train exactly like 1 process x 8 devices. The real stack: the tiny Qwen policy from agro_jax.train.stages.build_policy
(params FSDP-sharded over all 8 devices, so they span both hosts), config.grpo's optimizer, grpo.make_batch
(per-group advantages, zero-variance filter), the micro-batched grpo.make_update_step. Each host feeds only its own
rows of the global batch (multihost.place_batch) and scores them with its own SQLite executor pool. Before training,
greedy agent rollouts (rollout.run_rollouts + the KV-cache Sampler on the sharded params) give every example the same
trajectory as in the 1-process run, although host 0's rows are all done before turn 0 (so it must join the collective
generate calls with a dummy prompt).

This file is also the worker: `python tests/test_multihost.py --process-id i --num-processes n ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import sqlite3
import subprocess
import sys
import types

import numpy as np
import pytest

pytestmark = pytest.mark.memory_heavy  # three JAX processes at once (see tests/conftest.py)

GLOBAL_BATCH, GROUP, SEQ, PROMPT, VOCAB, STEPS, UPDATES_PER_BATCH, MICRO, LR = 16, 4, 16, 6, 128, 3, 2, 2, 1e-3
NUM_GROUPS = GLOBAL_BATCH // GROUP
REPO = pathlib.Path(__file__).resolve().parents[2]
OVERRIDES = [  # a tiny Qwen3 (vocab from the tokenizer; fsdp over 8 devices: hidden 32 = 8 x 4); 6 Adam steps of ~LR
    "mesh.shape=(1, 8, 1)",
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.head_dim=8",
    f"grpo.optim.learning_rate={LR}",
    "grpo.optim.grad_accum_steps=2",
    "grpo.updates_per_batch=2",
    "grpo.aggregation=token_mean",  # pinned: the thresholds below were measured with it (tiny_cpu now says seq-mean)
]


def _make_db(path: pathlib.Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(i, i % 5) for i in range(40)])
    con.commit()
    con.close()


def _global_data(step: int):
    """The whole global batch, identical on every host (each host then keeps only its own rows).

    Right-padded sequences of ragged length: PROMPT context tokens then the "agent" tokens (loss mask). Rows come
    in GROUP-sized groups sharing one gold SQL; groups never span hosts, so each host computes its groups'
    advantages alone, exactly as in the single-host run. Group 3 always answers right (zero variance: filtered).
    """
    rng = np.random.default_rng(1000 + step)
    lens = rng.integers(SEQ // 2, SEQ + 1, GLOBAL_BATCH)
    valid = np.arange(SEQ)[None] < lens[:, None]
    tokens = np.where(valid, rng.integers(3, VOCAB, (GLOBAL_BATCH, SEQ)), 0).astype(np.int32)
    loss_mask = (valid & (np.arange(SEQ)[None] >= PROMPT)).astype(np.float32)
    gold_v = np.repeat(rng.integers(0, 5, NUM_GROUPS), GROUP)
    pred_v = rng.integers(0, 5, GLOBAL_BATCH)
    pred_v[0::GROUP], pred_v[1::GROUP] = gold_v[0::GROUP], (gold_v[1::GROUP] + 1) % 5  # a right and a wrong answer
    pred_v[3 * GROUP :] = gold_v[3 * GROUP :]
    gold_sqls = [f"SELECT id FROM t WHERE v = {int(k)}" for k in gold_v]
    pred_sqls = [f"SELECT id FROM t WHERE v = {int(k)}" for k in pred_v]
    pred_sqls[5] = "SELEC id FROM"  # bad format on host 0's rows -> -1
    return tokens, valid, loss_mask, pred_sqls, gold_sqls


def _rollout_examples(db: str, tok) -> tuple[list[dict], int]:
    """4 examples (host 0 gets 0-1, host 1 gets 2-3) and a length budget: 0-1 have prompts over it (skipped as
    prompt_too_long before generating anything), 2-3 leave room for 8 new tokens."""
    from agro_jax.rollout import agent

    schema = "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)"
    notes = [" -- unused notes" * 60] * 2 + [""] * 2
    examples = [
        {"schema_text": schema + notes[i], "question": f"Which ids have v = {i}?", "db_path": db,
         "sql": f"SELECT id FROM t WHERE v = {i}"}
        for i in range(4)
    ]  # fmt: skip
    budget = max(len(agent.prompt_ids(tok, e["schema_text"], e["question"])) for e in examples[2:]) + 12
    return examples, budget


def _rollouts(config, sampler_args, params, executor, db, tok) -> dict:
    import jax
    from ml_collections import ConfigDict

    from agro_jax.rollout.loop import run_rollouts
    from agro_jax.rollout.sampler import Sampler
    from agro_jax.scale import multihost

    examples, budget = _rollout_examples(db, tok)
    cfg = ConfigDict(config.rollout.to_dict())
    cfg.update(max_turns=2, max_new_tokens_per_turn=8, max_prompt_len=budget, max_total_len=budget)
    sampler = Sampler(*sampler_args, tok, cfg)
    mine = multihost.process_slice(len(examples))
    rng = jax.random.key(0)
    ro = run_rollouts(sampler, params, examples[mine], executor, cfg, group_size=1, rng=rng, reward_cfg=config.reward,
                      greedy=True)  # fmt: skip
    out = {}
    for b, g in enumerate(range(mine.start, mine.stop)):
        k = int(ro.valid_BxT[b].sum())
        out[str(g)] = {"tokens": ro.tokens_BxT[b, :k].tolist(), "mask": ro.loss_mask_BxT[b, :k].tolist(),
                       "logp": ro.old_logp_BxT[b, :k].tolist(), "reason": ro.finish_reasons[b],
                       "turns": int(ro.num_turns_B[b]), "reward": float(ro.rewards_B[b])}  # fmt: skip
    return out


def _worker(args) -> None:
    if args.num_processes > 1:
        from agro_jax.scale.multihost import maybe_initialize_distributed

        assert maybe_initialize_distributed(f"localhost:{args.port}", args.num_processes, args.process_id)
    import jax
    from flax import nnx

    from agro_jax.config import load_config
    from agro_jax.model.tokenizer import load_tokenizer
    from agro_jax.rl import grpo
    from agro_jax.rl.rewards import compute_rewards
    from agro_jax.scale import multihost
    from agro_jax.sql.executor import Executor
    from agro_jax.train import optim
    from agro_jax.train.stages import build_policy

    assert jax.device_count() == 8 and jax.local_device_count() == 8 // args.num_processes
    config = load_config(str(REPO / "configs/tiny_cpu.py"), OVERRIDES)
    cfg = config.grpo
    tok = load_tokenizer(args.tok)
    mesh, model, model_cfg = build_policy(config, len(tok))
    rows = multihost.process_slice(GLOBAL_BATCH)
    assert multihost.process_batch_slice(multihost.batch_sharding(mesh), GLOBAL_BATCH) == rows
    graphdef, params, rest = grpo.split_model(model)
    init = multihost.host_gather(params)
    assert any(not x.is_fully_addressable for x in jax.tree.leaves(params)) == (args.num_processes > 1)

    history = []
    with jax.set_mesh(mesh), Executor(num_workers=1, timeout_s=10.0) as executor:
        optimizer = optim.make_optimizer(cfg.optim)
        opt_state = optimizer.init(params)
        rollouts = _rollouts(config, (graphdef, rest, model_cfg), params, executor, args.db, tok)
        update_step = grpo.make_update_step(graphdef, rest, optimizer, cfg)
        logp_fn = grpo.make_logp_fn(graphdef, rest)
        for step in range(STEPS):
            tokens, valid, loss_mask, pred_sqls, gold_sqls = _global_data(step)
            # This host's executor scores only this host's rows; group ids are local, as run_rollouts makes them.
            dbs = [args.db] * (rows.stop - rows.start)
            rewards, _ = compute_rewards(pred_sqls[rows], gold_sqls[rows], dbs, executor, config.reward)
            group_ids = (np.arange(rows.start, rows.stop) - rows.start) // GROUP
            local = types.SimpleNamespace(
                tokens_BxT=tokens[rows],
                valid_BxT=valid[rows],
                loss_mask_BxT=loss_mask[rows],
                old_logp_BxT=np.zeros((len(dbs), SEQ), np.float32),
                rewards_B=rewards,
                group_ids_B=group_ids.astype(np.int32),
            )
            keep = grpo.filter_zero_variance(local.rewards_B, local.group_ids_B)
            batch = grpo.make_batch(local, cfg, keep)
            tree = multihost.place_batch(grpo.to_micro(batch.tree(), MICRO), mesh)
            assert tree["tokens_BxT"].shape == (GLOBAL_BATCH // MICRO, MICRO, SEQ)
            assert tree["tokens_BxT"].is_fully_addressable == (args.num_processes == 1)
            tree["old_logp_BxT"] = logp_fn(params, tree["tokens_BxT"], tree["valid_BxT"])  # the sampling policy
            for _ in range(UPDATES_PER_BATCH):  # the 2nd update is off-policy (ratio != 1)
                params, opt_state, m = update_step(params, opt_state, tree)
                history.append({k: float(v) for k, v in jax.device_get(m).items()})
            history[-1]["reward_sum"] = float(multihost.host_gather(rewards).sum())
            history[-1]["kept"] = int(multihost.host_gather(keep).sum())
    final = multihost.host_gather(params)
    flat = lambda s: {".".join(map(str, k)): np.asarray(v) for k, v in nnx.to_flat_state(s)}  # noqa: E731
    np.savez(args.out + ".npz", **{f"final/{k}": v for k, v in flat(final).items()},
             **{f"init/{k}": v for k, v in flat(init).items()})  # fmt: skip
    multihost.sync("done")
    pathlib.Path(args.out).write_text(
        json.dumps({"history": history, "rows": [rows.start, rows.stop], "rollouts": rollouts})
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(tmp: pathlib.Path, db: pathlib.Path, num_processes: int, port: int) -> list[subprocess.Popen]:
    from helpers import xla_flags  # here: the workers run this file as a script, without tests/ on their path

    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(devices=8 // num_processes))
    procs = []
    for i in range(num_processes):
        cmd = [sys.executable, __file__, "--process-id", str(i), "--num-processes", str(num_processes)]
        cmd += ["--port", str(port), "--db", str(db), "--tok", str(tmp / "tok")]
        cmd += ["--out", str(tmp / f"out_{num_processes}_{i}.json")]
        log = open(tmp / f"log_{num_processes}_{i}.txt", "w")  # noqa: SIM115 - closed by the process ending
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _wait(tmp: pathlib.Path, procs: list[subprocess.Popen], num_processes: int) -> list[dict]:
    for i, p in enumerate(procs):
        try:
            rc = p.wait(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            rc = "timeout"
        if rc != 0:
            log = (tmp / f"log_{num_processes}_{i}.txt").read_text()[-4000:]
            pytest.fail(f"worker {i}/{num_processes} exited with {rc}:\n{log}")
    return [json.loads((tmp / f"out_{num_processes}_{i}.json").read_text()) for i in range(num_processes)]


def test_two_hosts_match_one_host(tmp_path):
    from agro_jax.model.tokenizer import train_tokenizer
    from agro_jax.rollout import agent

    db = tmp_path / "t.sqlite"
    _make_db(db)
    texts = [agent.SYSTEM_PROMPT, "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER) Which ids have v = 3?"] * 10
    train_tokenizer(texts, 300, str(tmp_path / "tok"), added_tokens=agent.AGENT_TAGS)  # loaded by every worker
    # Both runs at once: the 2-process pair and the 1-process reference (shared 2-core CPU, so overlap helps).
    multi = _launch(tmp_path, db, 2, _free_port())
    single = _launch(tmp_path, db, 1, _free_port())
    (ref,) = _wait(tmp_path, single, 1)
    hosts = _wait(tmp_path, multi, 2)
    ref_params = np.load(tmp_path / "out_1_0.json.npz")

    assert hosts[0]["rows"] == [0, 8] and hosts[1]["rows"] == [8, 16]  # each host fed only its own half
    # Rollouts: the same greedy trajectory for every example; host 0 had nothing to generate (all truncated).
    got = {**hosts[0]["rollouts"], **hosts[1]["rollouts"]}
    assert sorted(got) == sorted(ref["rollouts"]) == ["0", "1", "2", "3"]
    for g, want in ref["rollouts"].items():
        assert got[g]["tokens"] == want["tokens"] and got[g]["mask"] == want["mask"], f"example {g}"
        assert (got[g]["reason"], got[g]["turns"], got[g]["reward"]) == (want["reason"], want["turns"], want["reward"])
        np.testing.assert_allclose(got[g]["logp"], want["logp"], rtol=1e-5, atol=1e-6, err_msg=f"example {g}")
    assert [ref["rollouts"][g]["reason"] for g in "01"] == ["prompt_too_long"] * 2  # skipped, never cut
    assert [sum(ref["rollouts"][g]["mask"]) for g in "0123"] == [0, 0, 8, 8]  # 2-3 generated a full turn
    assert all(v < 0 for g in "23" for v in np.asarray(ref["rollouts"][g]["logp"])[-8:])

    hist = ref["history"]
    assert len(hist) == STEPS * UPDATES_PER_BATCH
    # Non-trivial run: group 3 is filtered (12 of 16 rows kept), the bad-format row scores -1, every update trains
    # on agent tokens, the 2nd update of each batch is off-policy and the policy moved well beyond float noise.
    assert [h["kept"] for h in hist[1::UPDATES_PER_BATCH]] == [12] * STEPS
    assert all(h["train_tokens"] > 0 for h in hist)
    assert all(abs(h["ratio_mean"] - 1.0) < 1e-5 for h in hist[0::UPDATES_PER_BATCH])
    assert all(abs(h["ratio_mean"] - 1.0) > 1e-4 for h in hist[1::UPDATES_PER_BATCH])
    final = [k for k in ref_params.files if k.startswith("final/")]
    moved = max(np.abs(ref_params[k] - ref_params["init/" + k[6:]]).max() for k in final)
    assert moved > 4 * LR  # Adam moves a param ~LR per update: several updates pushed the same way
    for i, h in enumerate(hosts):
        for a, b in zip(h["history"], hist):
            assert a.keys() == b.keys()
            for k in a:
                np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-7, err_msg=f"host {i}: {k}")
        got = np.load(tmp_path / f"out_2_{i}.json.npz")
        assert sorted(got.files) == sorted(ref_params.files)
        for k in ref_params.files:  # same init (bit-exact) ...
            if k.startswith("init/"):
                np.testing.assert_array_equal(got[k], ref_params[k], err_msg=f"host {i}: {k}")
        # ... and the same params after 6 sharded GRPO updates. Not bit-exact: the cross-host (gloo) all-reduce sums
        # in another order than the in-process one (grads differ ~1e-7 relative), and Adam's per-element
        # normalization turns that into up to ~LR/1000 where a grad is ~0. A wrong row, advantage or reduction
        # would be off by ~LR per update.
        diff = np.concatenate([np.abs(got[k] - ref_params[k]).ravel() for k in final])
        assert diff.max() < 1e-2 * LR, f"host {i}: max param diff {diff.max():.2e}"
        assert np.mean(diff > 1e-6) < 1e-3, f"host {i}: {np.sum(diff > 1e-6)} of {diff.size} params differ > 1e-6"


def test_initialize_arguments_are_checked_without_starting_anything():
    from agro_jax.scale.multihost import maybe_initialize_distributed, process_slice

    assert maybe_initialize_distributed(env={}) is False  # nothing asked: a plain single-process run
    assert maybe_initialize_distributed("localhost:1", 1, 0, env={}) is False  # one process: nothing to start
    with pytest.raises(ValueError, match="got coordinator_address but not num_processes, process_id"):
        maybe_initialize_distributed(env={"AGRO_COORDINATOR_ADDRESS": "h:1"})
    with pytest.raises(ValueError, match=r"process_id must be in \[0, 2\), got 2"):
        maybe_initialize_distributed("h:1", 2, 2, env={})
    with pytest.raises(ValueError, match="AGRO_NUM_PROCESSES must be an integer, got 'two'"):
        maybe_initialize_distributed(env={"AGRO_NUM_PROCESSES": "two"})
    assert process_slice(12, index=2, count=3) == slice(8, 12)
    with pytest.raises(ValueError, match="cannot split 10 items evenly over 3 processes"):
        process_slice(10, index=0, count=3)


def test_place_batch_single_process_is_shard_batch():
    """One process (conftest's 8 CPU devices): place_batch is sharding.shard_batch, rows over (data, fsdp)."""
    import jax
    from ml_collections import ConfigDict

    from agro_jax.scale.multihost import place_batch
    from agro_jax.scale.sharding import make_mesh

    mesh = make_mesh(ConfigDict({"shape": (2, 2, 2), "axis_names": ("data", "fsdp", "tensor")}))
    tree = {
        "tokens_BxT": np.arange(8 * 3, dtype=np.int32).reshape(8, 3),
        "adv_B": np.linspace(-1, 1, 8, dtype=np.float32),
    }
    placed = place_batch(tree, mesh)
    for k, v in tree.items():
        np.testing.assert_array_equal(np.asarray(placed[k]), v)
        assert placed[k].sharding.spec[0] == ("data", "fsdp") and len(placed[k].addressable_shards) == 8
        assert {s.data.shape[0] for s in placed[k].addressable_shards} == {2}  # 8 rows over data x fsdp = 4
    assert jax.process_count() == 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for name in ("--process-id", "--num-processes", "--port"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--tok", required=True)
    parser.add_argument("--out", required=True)
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
    _worker(parser.parse_args())
