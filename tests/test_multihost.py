"""Multi-host correctness: 2 processes x 4 CPU devices (jax.distributed over localhost, gloo collectives) must
train exactly like 1 process x 8 devices. Each host feeds only its own rows of the global batch and scores them
with its own SQLite executor pool; the global arrays are built with make_array_from_process_local_data.

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

import numpy as np
import pytest

GLOBAL_BATCH, GROUP, SEQ, VOCAB, STEPS, UPDATES_PER_BATCH = 16, 4, 8, 64, 3, 2
NUM_GROUPS = GLOBAL_BATCH // GROUP
REPO = pathlib.Path(__file__).resolve().parents[1]


def _make_db(path: pathlib.Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(i, i % 5) for i in range(40)])
    con.commit()
    con.close()


def _global_data(step: int):
    """The whole global batch, identical on every host (each host then keeps only its own rows).

    Rows come in GROUP-sized groups sharing one gold SQL (one prompt, several sampled answers); groups never span
    hosts, so each host computes its groups' advantages alone, exactly as in the single-host run.
    """
    rng = np.random.default_rng(1000 + step)
    tokens = rng.integers(0, VOCAB, size=(GLOBAL_BATCH, SEQ), dtype=np.int32)
    gold_sqls = [f"SELECT id FROM t WHERE v = {int(k)}" for k in np.repeat(rng.integers(0, 5, NUM_GROUPS), GROUP)]
    pred_sqls = [f"SELECT id FROM t WHERE v = {int(k)}" for k in rng.integers(0, 5, GLOBAL_BATCH)]
    pred_sqls[5] = "SELEC id FROM"  # bad format on host 0's rows -> -1
    return tokens, pred_sqls, gold_sqls


def _host_rewards(db_path: str, pred_sqls: list[str], gold_sqls: list[str]) -> np.ndarray:
    """This host's own executor pool scores this host's rows: +1 execution match, 0 wrong, -1 bad format."""
    from agro_jax.rewards import compute_rewards
    from agro_jax.sql.executor import Executor

    reward_cfg = {"correct": 1.0, "wrong": 0.0, "bad_format": -1.0, "compare_mode": "bird"}
    with Executor(num_workers=1, timeout_s=10.0) as executor:
        rewards, _ = compute_rewards(pred_sqls, gold_sqls, [db_path] * len(pred_sqls), executor, reward_cfg)
    return rewards


def _worker(args) -> None:
    if args.num_processes > 1:
        from agro_jax.multihost import maybe_initialize_distributed

        assert maybe_initialize_distributed(f"localhost:{args.port}", args.num_processes, args.process_id)
    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    from agro_jax import multihost

    assert jax.device_count() == 8 and jax.local_device_count() == 8 // args.num_processes
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
    data_sharding = multihost.batch_sharding(mesh)
    rows = multihost.process_batch_slice(data_sharding, GLOBAL_BATCH)
    assert rows.stop - rows.start == GLOBAL_BATCH // args.num_processes

    # The real GRPO pieces (config.grpo hyper-parameters, optimizer, advantages, clipped loss) on a tiny
    # embedding-MLP policy; params sharded over fsdp so every update needs cross-host collectives.
    from agro_jax import advantages, optim
    from agro_jax import losses as grpo_losses
    from agro_jax.config import load_config

    cfg = load_config(str(REPO / "configs/tiny_cpu.py"), ["grpo.optim.learning_rate=0.01"]).grpo
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = {
        "embed": jax.random.normal(k1, (VOCAB, 32)) * 0.1,
        "w1": jax.random.normal(k2, (32, 64)) * 0.1,
        "w2": jax.random.normal(k3, (64, VOCAB)) * 0.1,
    }
    params = jax.device_put(params, {k: NamedSharding(mesh, P("fsdp")) for k in params})
    optimizer = optim.make_optimizer(cfg.optim)
    opt_state = optimizer.init(params)

    def logp_fn(p, tokens_BxT):
        h_BxTxD = p["embed"][tokens_BxT[:, :-1]]
        logits_BxTxV = jax.nn.gelu(h_BxTxD @ p["w1"]) @ p["w2"]
        return jnp.take_along_axis(jax.nn.log_softmax(logits_BxTxV), tokens_BxT[:, 1:, None], -1)[..., 0]

    def loss_fn(p, b):
        kw = dict(clip_low=float(cfg.clip_low), clip_high=float(cfg.clip_high), aggregation=cfg.aggregation)
        total, count, _ = grpo_losses.grpo_loss(logp_fn(p, b["tokens"]), b["old_logp"], b["adv"], b["mask"], **kw)
        return total / jnp.maximum(count, 1e-8)

    @jax.jit
    def train_step(p, s, b):
        loss, grads = jax.value_and_grad(loss_fn)(p, b)
        updates, s = optimizer.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    mask = np.zeros((GLOBAL_BATCH, SEQ - 1), np.float32)
    mask[:, SEQ // 2 :] = 1.0  # loss on the "completion" half only, like agent tokens after the prompt
    group_ids = np.repeat(np.arange(NUM_GROUPS, dtype=np.int32), GROUP)
    losses, reward_sums = [], []
    for step in range(STEPS):
        tokens, pred_sqls, gold_sqls = _global_data(step)
        local_rewards = _host_rewards(args.db, pred_sqls[rows], gold_sqls[rows])
        local_adv = np.asarray(advantages.compute_advantages(cfg.advantage, local_rewards, group_ids[rows]))
        local = {"tokens": tokens[rows], "adv": local_adv, "mask": mask[rows]}
        batch = multihost.global_batch_from_local(local, data_sharding)
        assert batch["tokens"].shape == (GLOBAL_BATCH, SEQ)
        assert batch["tokens"].is_fully_addressable == (args.num_processes == 1)
        batch["old_logp"] = jax.jit(logp_fn)(params, batch["tokens"])  # sampling policy, fixed for the mu updates
        for _ in range(UPDATES_PER_BATCH):  # the 2nd update sees ratio != 1, so its loss depends on the params
            params, opt_state, loss = train_step(params, opt_state, batch)
            losses.append(float(loss))
        reward_sums.append(float(multihost.host_gather(local_rewards).sum()))
    flat = multihost.host_gather(params)
    checksum = float(sum(np.abs(np.asarray(v, np.float64)).sum() for v in jax.tree.leaves(flat)))
    multihost.sync("done")
    out = {"losses": losses, "reward_sums": reward_sums, "checksum": checksum, "rows": [rows.start, rows.stop]}
    pathlib.Path(args.out).write_text(json.dumps(out))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(tmp: pathlib.Path, db: pathlib.Path, num_processes: int, port: int) -> list[subprocess.Popen]:
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // num_processes}")
    procs = []
    for i in range(num_processes):
        cmd = [sys.executable, __file__, "--process-id", str(i), "--num-processes", str(num_processes)]
        cmd += ["--port", str(port), "--db", str(db), "--out", str(tmp / f"out_{num_processes}_{i}.json")]
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
    db = tmp_path / "t.sqlite"
    _make_db(db)
    # Both runs at once: the 2-process pair and the 1-process reference (shared 2-core CPU, so overlap helps).
    multi = _launch(tmp_path, db, 2, _free_port())
    single = _launch(tmp_path, db, 1, _free_port())
    (ref,) = _wait(tmp_path, single, 1)
    hosts = _wait(tmp_path, multi, 2)

    assert hosts[0]["rows"] == [0, 8] and hosts[1]["rows"] == [8, 16]  # each host fed only its own half
    # Non-trivial run: with ratio == 1 the first update's loss is ~0 (advantages are zero-mean per group); the
    # second update of each batch moved off-policy, so its loss is non-zero and differs step to step.
    second = ref["losses"][1::UPDATES_PER_BATCH]
    assert all(abs(v) > 1e-4 for v in second) and len(set(second)) == STEPS
    for h in hosts:
        np.testing.assert_allclose(h["reward_sums"], ref["reward_sums"], rtol=0, atol=0)
        np.testing.assert_allclose(h["losses"], ref["losses"], rtol=1e-6)
        np.testing.assert_allclose(h["checksum"], ref["checksum"], rtol=1e-6)


def test_initialize_arguments_are_checked_without_starting_anything():
    from agro_jax.multihost import maybe_initialize_distributed, process_slice

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


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for name in ("--process-id", "--num-processes", "--port"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--out", required=True)
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    _worker(parser.parse_args())
