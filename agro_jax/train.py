"""The one trainer loop, big_vision style, with two stages: `sft` (cold start) and `grpo`.

Workdir layout (per stage):  <workdir>/<stage>/checkpoints/<step>/   orbax: params, opt state, rng, data state
                             <workdir>/<stage>/metrics.jsonl        one line per step (+ tb/ TensorBoard events)
                             <workdir>/<stage>/hf/                  final policy as HF safetensors (if export_hf)
A stage resumes from its own latest complete checkpoint; a fresh stage may start from another stage's weights
(`init_from`: a checkpoints dir, one step dir in it, or an HF checkpoint dir).
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import numpy as np

from agro_jax import grpo, metrics, optim
from agro_jax.checkpoint import Checkpointer, export_hf, load_params


def stage_dir(workdir, stage: str) -> pathlib.Path:
    return pathlib.Path(workdir) / stage


def build_policy(config, vocab_size: int | None, init_from=None):
    """(mesh, model, model_cfg) with params sharded by config.mesh rules; weights from init_from if given."""
    from agro_jax.model.builder import build_model
    from agro_jax.sharding import make_mesh

    mesh = make_mesh(config.mesh)
    init_from = pathlib.Path(init_from) if init_from else None
    if init_from is not None and (init_from / "config.json").is_file():
        # An HF dir (e.g. a previous stage's export): its architecture, but config.model's dtypes and remat, as
        # build_model does for model.hf_path (float32 master params over a bf16 checkpoint).
        model, model_cfg = build_model(dict(config.model.to_dict(), hf_path=str(init_from)), mesh, config.mesh.rules)
        return mesh, model, model_cfg
    model, model_cfg = build_model(config.model, mesh, config.mesh.rules, vocab_size=vocab_size, seed=int(config.seed))
    if init_from is not None:
        from flax import nnx

        directory, step = (init_from.parent, int(init_from.name)) if init_from.name.isdigit() else (init_from, None)
        params = load_params(directory, nnx.state(model, nnx.Param), step)
        nnx.update(model, params)
    return mesh, model, model_cfg


def train_loop(stage, config, stage_cfg, workdir, *, params, total_steps, data_iter, one_step, rng):
    """The canonical loop: restore -> [one_step -> metrics -> checkpoint]* -> final checkpoint.

    `one_step(step, params, opt_state, rng_step) -> (params, opt_state, metrics)` owns the stage's data and update;
    the loop owns optimizer init, the per-step RNG (fold_in of the saved base key: resume-exact), checkpoints,
    metrics and the data-iterator state. Returns (params, path of the final checkpoint).
    """
    out = stage_dir(workdir, stage)
    ckpt_cfg = config.checkpoint
    ckpt = Checkpointer(out / "checkpoints", keep=int(ckpt_cfg.keep), async_save=bool(ckpt_cfg.async_save))
    optimizer = optim.make_optimizer(stage_cfg.optim)
    opt_state = optimizer.init(params)
    start = 0
    if ckpt.latest_step() is not None:
        params, opt_state, rng, meta = ckpt.restore(params=params, opt_state=opt_state, rng_key=rng)
        start = int(meta["step"])
        if data_iter is not None and meta.get("data_state") is not None:
            data_iter.set_state(meta["data_state"])
        print(f"[{stage}] resumed from {out / 'checkpoints'} at step {start}")
    writer = metrics.MetricsWriter(out, total_steps=total_steps, initial_step=start, desc=stage)
    every = max(int(ckpt_cfg.every_steps), 1)
    try:
        for step in range(start, total_steps):
            params, opt_state, m = one_step(step, params, opt_state, optimizer, jax.random.fold_in(rng, step))
            writer.write(step + 1, m)
            if (step + 1) % every == 0 or step + 1 == total_steps:
                state = data_iter.get_state() if data_iter is not None else None
                ckpt.save(step + 1, params=params, opt_state=opt_state, rng_key=rng, data_state=state, force=True)
    finally:
        writer.close()
        ckpt.close()
    final = ckpt.latest_step()
    return params, (out / "checkpoints" / str(final)) if final is not None else None


def _maybe_export(config, stage, workdir, model, model_cfg, params, tokenizer=None):
    """<workdir>/<stage>/hf: the trained policy as an HF checkpoint, with the tokenizer files when there is one, so
    the dir loads on its own (transformers, agro-sql eval/convert, --init_from)."""
    if not config.checkpoint.get("export_hf", False):
        return None
    from flax import nnx

    nnx.update(model, params)
    out = export_hf(model, model_cfg, stage_dir(workdir, stage) / "hf")
    if tokenizer is not None and jax.process_index() == 0:
        tokenizer.save_pretrained(str(out))
    return out


# ---------------------------------------------------------------------------------------------------------- GRPO


def make_env(config, graphdef, rest, model_cfg, tokenizer=None):
    name = config.grpo.get("env", "sql")
    if name == "toy":
        from agro_jax.toy_env import ToyEnv

        return ToyEnv(config, graphdef, rest, model_cfg.vocab_size)
    if name == "sql":
        from agro_jax.sql_env import SqlEnv

        return SqlEnv(config, graphdef, rest, model_cfg, tokenizer)
    raise ValueError(f"config.grpo.env={name!r} must be 'sql' or 'toy'")


def run_grpo(config, workdir=None, *, init_from=None, tokenizer=None, max_steps: int | None = None):
    """GRPO stage. Returns the path of the final checkpoint (<workdir>/grpo/checkpoints/<step>)."""
    from agro_jax.multihost import place_batch

    workdir = workdir or config.workdir
    cfg = config.grpo
    if cfg.get("env", "sql") == "sql":
        tokenizer = resolve_tokenizer(config, workdir, tokenizer)
    vocab = int(config.model.vocab_size) or (len(tokenizer) if tokenizer is not None else None)
    mesh, model, model_cfg = build_policy(config, vocab, init_from)
    graphdef, params, rest = grpo.split_model(model)
    # beta == 0: no reference model is held or run at all.
    ref_params = jax.tree.map(lambda x: x.copy(), params) if float(cfg.beta) else None
    logp_fn = grpo.make_logp_fn(graphdef, rest)
    micro = int(cfg.optim.grad_accum_steps)
    update_step = None  # built lazily: it needs the optimizer made inside train_loop
    env = make_env(config, graphdef, rest, model_cfg, tokenizer)
    data_iter = env.prompt_iterator()
    counters = {"ref_forwards": 0}
    timer = metrics.Timer()

    def one_step(step, params, opt_state, optimizer, rng):
        nonlocal update_step
        if update_step is None:
            update_step = grpo.make_update_step(graphdef, rest, optimizer, cfg)
        with timer("rollout"):
            ro, keep_B, first = collect_rollouts(env, params, data_iter, rng, cfg)
        # Rollout lengths vary per step: pad T up to a bucket so the update compiles a handful of times, not per step.
        ro = _Namespace(_pad_t(vars(ro), _bucket(ro.tokens_BxT.shape[1], int(config.rollout.max_total_len))))
        batch = grpo.make_batch(ro, cfg, keep_B)
        t0 = time.perf_counter()
        with timer("update"):
            tree = place_batch(grpo.to_micro(batch.tree(), micro), mesh)
            if cfg.get("recompute_old_logp", False):
                tree["old_logp_BxT"] = logp_fn(params, tree["tokens_BxT"], tree["valid_BxT"])
            if ref_params is not None:
                tree["ref_logp_BxT"] = logp_fn(ref_params, tree["tokens_BxT"], tree["valid_BxT"])
                counters["ref_forwards"] += 1
            for _ in range(int(cfg.updates_per_batch)):
                params, opt_state, m = update_step(params, opt_state, tree)
            m = jax.device_get(m)
        m.update(rollout_metrics(first, config.reward, keep_B))
        m.update(timer.pop())
        m.update({f"time/env_{k}": v for k, v in first.timings.items()})  # e.g. generation vs reward split
        m["sample_rounds"] = first.rounds
        m["tokens_per_s"] = float(np.sum(first.valid_BxT)) / max(m.get("time/rollout", 0.0), 1e-9)
        m["update_tokens_per_s"] = float(np.sum(batch.valid_BxT)) / max(time.perf_counter() - t0, 1e-9)
        return params, opt_state, m

    steps = int(cfg.steps) if max_steps is None else min(int(cfg.steps), max_steps)
    with jax.set_mesh(mesh), _closing(env):
        params, final = train_loop(
            "grpo",
            config,
            cfg,
            workdir,
            params=params,
            total_steps=steps,
            data_iter=data_iter,
            one_step=one_step,
            rng=jax.random.key(int(config.seed) + 1),
        )
    run_grpo.last_counters = dict(counters, ref_params_held=ref_params is not None)
    _maybe_export(config, "grpo", workdir, model, model_cfg, params, tokenizer)
    return final


class _closing:
    """Closes the env (its executor pool) however the loop ends."""

    def __init__(self, env):
        self.env = env

    def __enter__(self):
        return self.env

    def __exit__(self, *exc):
        if hasattr(self.env, "close"):
            self.env.close()


def _arrays(ro) -> dict:
    names = ("tokens_BxT", "valid_BxT", "loss_mask_BxT", "old_logp_BxT", "group_ids_B", "rewards_B", "num_turns_B")
    out = {k: np.asarray(getattr(ro, k)) for k in names if getattr(ro, k, None) is not None}
    if "valid_BxT" not in out:
        raise ValueError("rollout has no valid_BxT (attention validity mask); the update needs it")
    return out


def _bucket(t: int, max_len: int, step: int = 128) -> int:
    """Padded T of the update: powers of two up to `step`, then multiples of `step` (a handful of compiles; short
    rollouts are not padded 10x)."""
    if jax.process_count() > 1:  # hosts roll out independently; one global array needs one T on every host
        return max(t, max_len)
    b = 1 << max(t - 1, 0).bit_length() if t <= step else -(-t // step) * step
    return max(t, min(b, max_len))


def _pad_t(a: dict, t: int) -> dict:
    return {k: (np.pad(v, [(0, 0), (0, t - v.shape[1])]) if k.endswith("BxT") else v) for k, v in a.items()}


def collect_rollouts(env, params, data_iter, rng, cfg):
    """One rollout batch, with zero-variance groups replaced by informative groups from up to
    cfg.max_resample_rounds extra rounds (dynamic sampling). Groups still uninformative stay in the batch with
    keep=False (zero loss weight), so the batch shape and the jit stay fixed. Returns (arrays, keep_B, first)."""
    timings: dict[str, float] = {}
    calls = [0]

    def sample(r):
        calls[0] += 1
        raw = env.rollout(params, next(data_iter), jax.random.fold_in(rng, r))
        for k, v in (getattr(raw, "timings", None) or {}).items():
            timings[k] = timings.get(k, 0.0) + float(v)
        return _arrays(raw)

    first = sample(0)
    ro = {k: v.copy() for k, v in first.items()}  # filled in place below; `first` stays as sampled
    keep = np.ones(len(ro["rewards_B"]), bool)
    if cfg.filter_zero_variance:
        keep = grpo.filter_zero_variance(ro["rewards_B"], ro["group_ids_B"])
        for r in range(1, int(cfg.max_resample_rounds) + 1):
            if keep.all():
                break
            extra = sample(r)
            extra_keep = grpo.filter_zero_variance(extra["rewards_B"], extra["group_ids_B"])
            t = max(ro["tokens_BxT"].shape[1], extra["tokens_BxT"].shape[1])
            ro, extra = _pad_t(ro, t), _pad_t(extra, t)
            donors = [g for g in dict.fromkeys(extra["group_ids_B"][extra_keep].tolist())]
            holes = [g for g in dict.fromkeys(ro["group_ids_B"][~keep].tolist())]
            for hole, donor in zip(holes, donors):
                dst = np.flatnonzero(ro["group_ids_B"] == hole)
                src = np.flatnonzero(extra["group_ids_B"] == donor)
                if len(dst) != len(src):
                    continue
                for k, v in ro.items():
                    if k != "group_ids_B":
                        v[dst] = extra[k][src]
                keep[dst] = True
    return _Namespace(ro), keep, _Namespace(dict(first, timings=timings, rounds=calls[0]))


class _Namespace:
    def __init__(self, d):
        self.__dict__.update(d)


def rollout_metrics(ro, reward_cfg, keep_B) -> dict:
    r = np.asarray(ro.rewards_B, np.float64)
    mask = np.asarray(ro.loss_mask_BxT)
    out = {
        "reward_mean": r.mean(),
        "reward_std": r.std(),
        "ex": np.mean(r >= float(reward_cfg.correct)),
        "format_rate": np.mean(r > float(reward_cfg.bad_format)),
        "completion_len": mask.sum(1).mean(),
        "seq_len": np.asarray(ro.valid_BxT).sum(1).mean(),
        "turns": np.asarray(ro.num_turns_B).mean(),
        "kept_frac": np.mean(keep_B),
    }
    return {k: float(v) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------------------- SFT


def resolve_tokenizer(config, workdir, tokenizer=None):
    """The tokenizer given, else config.tokenizer.path, else <workdir>/tokenizer (written by the pipeline)."""
    if tokenizer is not None:
        return tokenizer
    from agro_jax.model.tokenizer import load_tokenizer

    for path in (config.tokenizer.path, pathlib.Path(workdir) / "tokenizer"):
        if path and pathlib.Path(path).is_dir():
            return load_tokenizer(str(path))
    raise FileNotFoundError(
        f"no tokenizer: config.tokenizer.path is {config.tokenizer.path!r} and {workdir}/tokenizer does not exist"
    )


def sft_sequences(config, workdir, tokenizer, examples=None):
    """Factory examples -> gold trajectories -> diversity selection -> [(tokens, agent_mask)]; logs the selection."""
    import json

    from agro_jax import sft
    from agro_jax.sql.executor import Executor

    if examples is None:
        from agro_jax.data import load_examples

        examples = load_examples(config.data.data_dir, config.data.train_split)
    with Executor.from_config(config.executor) as executor:
        trajs = sft.build_trajectories(examples, executor, config.rollout)
    chosen = sft.select_trajectories(trajs, int(config.sft.num_selected), int(config.seed))
    out = stage_dir(workdir, "sft")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "selected.jsonl", "w") as f:
        for t in chosen:
            f.write(json.dumps({"question": t["example"]["question"], "sql": t["sql"]}) + "\n")
    print(f"[sft] {len(trajs)} gold trajectories from {len(examples)} examples; selected {len(chosen)}")
    return sft.tokenize_trajectories(chosen, tokenizer, int(config.rollout.max_total_len))


def run_sft(config, workdir=None, *, examples=None, sequences=None, tokenizer=None, init_from=None, max_steps=None):
    """Cold-start SFT stage. `sequences` ([(tokens, agent_mask)]) skips trajectory building (tests, custom data).
    Returns the path of the final checkpoint (<workdir>/sft/checkpoints/<step>)."""
    from agro_jax import sft
    from agro_jax.multihost import place_batch

    workdir = workdir or config.workdir
    cfg = config.sft
    if sequences is None:
        tokenizer = resolve_tokenizer(config, workdir, tokenizer)
        sequences = sft_sequences(config, workdir, tokenizer, examples)
    vocab = int(config.model.vocab_size) or (len(tokenizer) if tokenizer is not None else None)
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    mesh, model, model_cfg = build_policy(config, vocab, init_from)
    graphdef, params, rest = grpo.split_model(model)
    batches = sft.SFTBatches(sequences, int(cfg.batch_size), int(config.seed), pad_id)
    steps = int(cfg.epochs) * batches.steps_per_epoch
    steps = steps if max_steps is None else min(steps, max_steps)
    step_fn = None
    timer = metrics.Timer()

    def one_step(step, params, opt_state, optimizer, rng):
        nonlocal step_fn
        step_fn = step_fn or sft.make_sft_step(graphdef, rest, optimizer)
        with timer("update"):
            batch = place_batch(grpo.to_micro(next(batches), int(cfg.optim.grad_accum_steps)), mesh)
            params, opt_state, m = step_fn(params, opt_state, batch)
            m = jax.device_get(m)
        m.update(timer.pop())
        m["epoch"] = batches.epoch
        return params, opt_state, m

    with jax.set_mesh(mesh):
        params, final = train_loop(
            "sft",
            config,
            cfg,
            workdir,
            params=params,
            total_steps=steps,
            data_iter=batches,
            one_step=one_step,
            rng=jax.random.key(int(config.seed)),
        )
    _maybe_export(config, "sft", workdir, model, model_cfg, params, tokenizer)
    return final


# ----------------------------------------------------------------------------------------------------------- CLI


def _parse(args, stage):
    p = argparse.ArgumentParser(prog=f"agro-sql {stage}")
    p.add_argument("--init_from", default=None, help="checkpoints dir, one step dir, or an HF checkpoint dir")
    p.add_argument("--max_steps", type=int, default=None, help="stop early (the schedule still uses config steps)")
    return p.parse_args(getattr(args, "extra", []) or [])


def grpo_main(config, args) -> int:
    a = _parse(args, "grpo")
    final = run_grpo(
        config, getattr(args, "workdir", None) or config.workdir, init_from=a.init_from, max_steps=a.max_steps
    )
    print(f"grpo: final checkpoint {final}")
    return 0


def sft_main(config, args) -> int:
    a = _parse(args, "sft")
    final = run_sft(
        config, getattr(args, "workdir", None) or config.workdir, init_from=a.init_from, max_steps=a.max_steps
    )
    print(f"sft: final checkpoint {final}")
    return 0
