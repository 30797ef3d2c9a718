"""The training stages run by the one loop (loop.py): `sft` (cold start on agent tokens) and `grpo` (multi-turn
rollouts, execution rewards, jitted update), with policy building, tokenizer lookup, HF export and the CLI entries.

    agro-sql sft --config configs/tiny_cpu.py [--init-from DIR] [--max-steps N]
    agro-sql grpo --config configs/tiny_cpu.py [--init-from DIR] [--max-steps N]

A fresh stage may start from another stage's weights (`init_from`: a checkpoints dir, one step dir in it, or an HF
checkpoint dir); a stage with checkpoints of its own resumes from them.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import numpy as np

from agro_jax.model import lora
from agro_jax.rl import grpo
from agro_jax.rollout.batch import Namespace, bucket_len, collect_rollouts, pad_t, rollout_metrics, signal_rows
from agro_jax.rollout.envs import make_env
from agro_jax.train import grpo_probe, metrics
from agro_jax.train.checkpoint import export_hf, holds_adapters, load_params
from agro_jax.train.loop import stage_dir, train_loop


def build_policy(config, vocab_size: int | None, init_from=None):
    """(mesh, model, model_cfg) with params sharded by config.mesh rules; weights from init_from if given: a
    checkpoints dir, one step dir, an HF dir, or a list of checkpoints dirs applied in order (a LoRA GRPO stage's
    adapters were trained on the SFT-merged base: [sft, grpo] is that policy; given grpo's alone, the chain it
    recorded (record_base) is applied before it)."""
    if isinstance(init_from, (list, tuple)):
        chain = [pathlib.Path(p) for p in init_from]
    else:  # a LoRA stage's checkpoint also brings the weights its adapters were trained over (base_chain.json)
        chain = [] if init_from is None else [*recorded_base(init_from), pathlib.Path(init_from)]
    mesh, model, model_cfg = _build_one(config, vocab_size, chain[0] if chain else None)
    for src in chain[1:]:
        _load_weights(model, src)
    return mesh, model, model_cfg


_BASE_CHAIN = "base_chain.json"


def _checkpoints_dir(path) -> pathlib.Path:
    path = pathlib.Path(path).absolute()
    return path.parent if path.name.isdigit() else path


def recorded_base(init_from) -> list[pathlib.Path]:
    """What the LoRA adapters in checkpoints dir (or step dir) `init_from` were trained over, applied in order before
    them: [] for a full-weight checkpoint, an HF dir, or adapters over config.model.hf_path itself."""
    f = _checkpoints_dir(init_from).parent / _BASE_CHAIN
    if pathlib.Path(init_from, "config.json").is_file() or not f.is_file():
        return []
    return [pathlib.Path(p) for p in json.loads(f.read_text())["chain"]]


def record_base(config, workdir, stage: str, init_from) -> None:
    """<stage>/base_chain.json: the weights a LoRA stage trains its adapters over (its init_from and what that was
    trained over), so `build_policy(init_from=<stage>/checkpoints)` (agro-sql eval --policy, --init-from) rebuilds
    the trained policy, not its adapters on model.hf_path alone. Full-weight stages need none."""
    f = stage_dir(workdir, stage) / _BASE_CHAIN
    if jax.process_index() != 0:
        return
    if int(config.model.lora.get("rank", 0)) <= 0:
        f.unlink(missing_ok=True)  # a full-weight rerun in this stage dir: a stale chain must not apply
        return
    if init_from is None:  # fresh adapters over model.hf_path, or a resume of this stage: what it recorded stands
        return
    chain = [str(p.absolute()) for p in [*recorded_base(init_from), pathlib.Path(init_from)]]
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps({"chain": chain}, indent=1))
    tmp.replace(f)


def _build_one(config, vocab_size: int | None, init_from):
    from agro_jax.model.builder import build_model
    from agro_jax.model.real_model import resolve_model_path
    from agro_jax.scale.sharding import make_mesh

    mesh = make_mesh(config.mesh)
    # a GGUF file (or the real model's cache dir) resolves to its converted HF dir; other paths are unchanged
    init_from = resolve_model_path(init_from) if init_from else None
    if init_from is not None and (init_from / "config.json").is_file():
        # An HF dir (e.g. a previous stage's export): its architecture, but config.model's dtypes and remat, as
        # build_model does for model.hf_path (float32 master params over a bf16 checkpoint).
        model, model_cfg = build_model(dict(config.model.to_dict(), hf_path=str(init_from)), mesh, config.mesh.rules)
        return mesh, model, model_cfg
    model, model_cfg = build_model(config.model, mesh, config.mesh.rules, vocab_size=vocab_size, seed=int(config.seed))
    if init_from is not None:
        _load_weights(model, init_from)
    return mesh, model, model_cfg


def _load_weights(model, init_from: pathlib.Path) -> None:
    from flax import nnx

    directory, step = (init_from.parent, int(init_from.name)) if init_from.name.isdigit() else (init_from, None)
    if holds_adapters(directory, step):
        # A LoRA stage's checkpoint (adapters only): its base is config.model.hf_path; its adapters are merged into
        # that base and this stage trains fresh ones (so an adapters-off reference is the starting policy).
        if not lora.has_adapters(model):
            raise ValueError(f"init_from {init_from}: LoRA adapters only; set config.model.lora.rank (and hf_path)")
        nnx.update(model, load_params(directory, nnx.state(model, lora.LoRAParam), step))
        lora.merge_adapters(model)
    else:
        nnx.update(model, load_params(directory, nnx.state(model, nnx.Param), step))


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


def run_grpo(config, workdir=None, *, init_from=None, tokenizer=None, max_steps: int | None = None):
    """GRPO stage. Returns the path of the final checkpoint (<workdir>/grpo/checkpoints/<step>)."""
    from agro_jax.scale.multihost import place_batch
    from agro_jax.scale.sharding import batch_devices

    workdir = workdir or config.workdir
    cfg = config.grpo
    env_name = cfg.get("env", "sql")
    if env_name == "sql":
        tokenizer = resolve_tokenizer(config, workdir, tokenizer)
    vocab = int(config.model.vocab_size) or (len(tokenizer) if tokenizer is not None else None)
    mesh, model, model_cfg = build_policy(config, vocab, init_from)
    record_base(config, workdir, "grpo", init_from)
    # LoRA: params are the adapters (optimizer state, checkpoints); the base weights are `frozen`, passed to each step.
    graphdef, params, frozen, rest = lora.split(model)
    # beta == 0: no reference model is held or run at all. LoRA: the reference is the model with adapters off.
    ref_params = None
    if float(cfg.beta):
        ref_params = lora.adapters_off(params) if lora.has_adapters(model) else jax.tree.map(lambda x: x.copy(), params)
    env = make_env(env_name, config, graphdef, rest, model_cfg, tokenizer)
    temperature = env.logp_temperature  # the policy the rollouts sample is the one trained
    logp_fn = grpo.make_logp_fn(graphdef, rest, temperature)
    micro = int(cfg.optim.grad_accum_steps)
    update_step = None  # built lazily: it needs the optimizer made inside train_loop
    data_iter = env.prompt_iterator(**grpo_probe.prompt_filter(cfg, workdir))  # grpo.prompts
    counters = {"ref_forwards": 0}
    timer = metrics.Timer()
    probe_every = int(cfg.get("probe_every", 0)) if env_name == "sql" else 0
    probe = grpo_probe.probe_examples(config, int(cfg.get("probe_examples", 64))) if probe_every > 0 else None

    def one_step(step, params, opt_state, optimizer, rng):
        nonlocal update_step
        if update_step is None:
            update_step = grpo.make_update_step(graphdef, rest, optimizer, cfg, temperature)
        policy = lora.policy_state(params, frozen)
        m0 = grpo_probe.probe(env, policy, probe, config, "probe_init") if probe and step == 0 else {}
        with timer("rollout"):
            ro, keep_B, first = collect_rollouts(env, policy, data_iter, rng, cfg, float(config.reward.correct))
        # Rollout lengths vary per step: pad T up to a bucket so the update compiles a handful of times, not per step.
        ro = Namespace(pad_t(vars(ro), bucket_len(ro.tokens_BxT.shape[1], int(config.rollout.max_total_len))))
        rows = micro * batch_devices(mesh)  # the update's row count must split into micro-batches over devices
        batch = signal_rows(grpo.make_batch(ro, cfg, keep_B), keep_B, rows, int(config.rollout.max_total_len),
                            cfg.aggregation)  # fmt: skip
        t0 = time.perf_counter()
        with timer("update"):
            tree = place_batch(grpo.to_micro(batch.tree(), micro), mesh)
            if cfg.get("recompute_old_logp", False):
                tree["old_logp_BxT"] = logp_fn(params, tree["tokens_BxT"], tree["valid_BxT"], frozen)
            if ref_params is not None:
                tree["ref_logp_BxT"] = logp_fn(ref_params, tree["tokens_BxT"], tree["valid_BxT"], frozen)
                counters["ref_forwards"] += 1
            for _ in range(int(cfg.updates_per_batch)):
                params, opt_state, m = update_step(params, opt_state, tree, frozen)
            m = jax.device_get(m)
        m.update(rollout_metrics(first, config.reward, keep_B))
        m.update(timer.pop())
        m.update({f"time/env_{k}": v for k, v in first.timings.items()})  # e.g. generation vs reward split
        m["sample_rounds"] = first.rounds
        m["tokens_per_s"] = float(np.sum(first.valid_BxT)) / max(m.get("time/rollout", 0.0), 1e-9)
        m["update_tokens_per_s"] = float(np.sum(batch.valid_BxT)) / max(time.perf_counter() - t0, 1e-9)
        if probe and ((step + 1) % probe_every == 0 or step + 1 == steps):
            m.update(grpo_probe.probe(env, lora.policy_state(params, frozen), probe, config, "probe"))
        return params, opt_state, dict(m0, **m)

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


# ----------------------------------------------------------------------------------------------------------- SFT


def resolve_tokenizer(config, workdir, tokenizer=None):
    """The tokenizer given, else config.tokenizer.path, else <workdir>/tokenizer (written by the pipeline)."""
    if tokenizer is not None:
        return tokenizer
    from agro_jax.model.real_model import resolve_model_path
    from agro_jax.model.tokenizer import load_tokenizer

    given = resolve_model_path(config.tokenizer.path) if config.tokenizer.path else ""  # a GGUF -> its HF dir
    for path in (given, pathlib.Path(workdir) / "tokenizer"):
        if path and pathlib.Path(path).is_dir():
            return load_tokenizer(str(path))
    from agro_jax.errors import MissingInputError

    raise MissingInputError(
        f"no tokenizer: config.tokenizer.path is {config.tokenizer.path!r} and {workdir}/tokenizer does not exist; "
        f"run `agro-sql run --stages factory,tokenizer --workdir {workdir}` or set --config.tokenizer.path"
    )


def policy_tokenizer(config, checkpoint):
    """The tokenizer that goes with `checkpoint`: its own (HF export), else resolve_tokenizer's choice
    (config.tokenizer.path, else the `tokenizer/` of the run folder above it: <workdir>/<stage>/checkpoints/<step>)."""
    from agro_jax.model.real_model import resolve_model_path
    from agro_jax.model.tokenizer import load_tokenizer

    path = resolve_model_path(checkpoint).absolute()
    if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
        return load_tokenizer(str(path))
    run_dirs = [p for p in list(path.parents)[:4] if (p / "tokenizer" / "tokenizer.json").is_file()]
    return resolve_tokenizer(config, run_dirs[0] if run_dirs else config.workdir)


def sft_sequences(config, workdir, tokenizer, examples=None):
    """Factory examples -> gold trajectories -> diversity selection -> [(tokens, agent_mask)]; logs the selection."""
    import json

    from agro_jax.sql.executor import Executor
    from agro_jax.train import sft, sft_recovery

    if examples is None:
        from agro_jax.data.loader import load_examples

        examples = load_examples(config.data.data_dir, config.data.train_split)
    with Executor.from_config(config.executor) as executor:
        trajs = sft.build_trajectories(examples, executor, config.rollout)
        chosen = sft.select_trajectories(trajs, int(config.sft.num_selected), int(config.seed))
        fraction = float(config.sft.get("recovery_fraction", 0.0))
        recovered = sft_recovery.add_recovery(chosen, executor, config.rollout, fraction, int(config.seed))
    out = stage_dir(workdir, "sft")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "selected.jsonl", "w") as f:
        for t in chosen:
            row = {"question": t["example"]["question"], "sql": t["sql"], "recovery": "turns" in t}
            f.write(json.dumps(row) + "\n")
    recovery = f", {recovered} of them as recovery trajectories (a failing first query)" if fraction else ""
    print(f"[sft] {len(trajs)} gold trajectories from {len(examples)} examples; selected {len(chosen)}{recovery}")
    return sft.tokenize_trajectories(chosen, tokenizer, int(config.rollout.max_total_len))


def run_sft(config, workdir=None, *, examples=None, sequences=None, tokenizer=None, init_from=None, max_steps=None):
    """Cold-start SFT stage. `sequences` ([(tokens, agent_mask)]) skips trajectory building (tests, custom data).
    Returns the path of the final checkpoint (<workdir>/sft/checkpoints/<step>)."""
    from agro_jax.scale.multihost import place_batch
    from agro_jax.train import sft

    workdir = workdir or config.workdir
    cfg = config.sft
    if sequences is None:
        tokenizer = resolve_tokenizer(config, workdir, tokenizer)
        sequences = sft_sequences(config, workdir, tokenizer, examples)
    vocab = int(config.model.vocab_size) or (len(tokenizer) if tokenizer is not None else None)
    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    mesh, model, model_cfg = build_policy(config, vocab, init_from)
    record_base(config, workdir, "sft", init_from)
    graphdef, params, frozen, rest = lora.split(model)  # LoRA: params = adapters, frozen = base weights
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
            params, opt_state, m = step_fn(params, opt_state, batch, frozen)
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


def sft_arguments(p, stage="sft") -> None:
    p.add_argument("--init-from", default=None, metavar="DIR", help="start from these weights: a checkpoints dir, "
                   "one step dir in it, or an HF dir (a stage with checkpoints resumes instead)")  # fmt: skip
    p.add_argument("--max-steps", type=int, default=None, metavar="N", help="stop after N steps (schedule: config's)")
    p.epilog = f"example:\n  agro-sql {stage} --config configs/tiny_cpu.py --workdir runs/tiny_cpu --max-steps 5"


def grpo_arguments(p) -> None:
    sft_arguments(p, "grpo")


def stage_inputs(config, stage: str, init_from):
    """A stage run alone finds its inputs where `agro-sql run` puts them in the workdir: the data in factory/tfds
    (unless config.data.data_dir says otherwise) and, for GRPO without --init-from or checkpoints of its own, the SFT
    stage's latest checkpoint. Returns init_from; a missing input is a UsageError naming how to make it."""
    from agro_jax.errors import MissingInputError
    from agro_jax.train.checkpoint import Checkpointer

    workdir = pathlib.Path(config.workdir)
    with config.unlocked():
        config.data.data_dir = config.data.data_dir or str(workdir / "factory" / "tfds")
    needs_data = stage == "sft" or config.grpo.get("env", "sql") == "sql"
    if needs_data and not pathlib.Path(config.data.data_dir).exists():
        raise MissingInputError(f"no training data at {config.data.data_dir}: run `agro-sql factory --workdir "
                                f"{workdir}` first, or set --config.data.data_dir")  # fmt: skip
    if init_from is not None and not pathlib.Path(init_from).exists():
        raise MissingInputError(f"--init-from {init_from}: no such file or directory")

    def latest(name):
        d = workdir / name / "checkpoints"
        if not d.is_dir():
            return None
        ckpt = Checkpointer(d, async_save=False)
        step = ckpt.latest_step()
        ckpt.close()
        return None if step is None else d / str(step)

    if stage == "grpo" and init_from is None and latest("grpo") is None:
        init_from = latest("sft")
        if init_from is not None:
            print(f"grpo: starting from the SFT checkpoint {init_from} (--init-from to choose another)")
        elif not config.model.get("hf_path"):
            print(f"grpo: WARNING no SFT checkpoint in {workdir}/sft and no --init-from: starting from random weights")
    return init_from


def grpo_main(config, args) -> int:
    init_from = stage_inputs(config, "grpo", args.init_from)
    final = run_grpo(config, config.workdir, init_from=init_from, max_steps=args.max_steps)
    print(f"grpo: final checkpoint {final}")
    return 0


def sft_main(config, args) -> int:
    init_from = stage_inputs(config, "sft", args.init_from)
    final = run_sft(config, config.workdir, init_from=init_from, max_steps=args.max_steps)
    print(f"sft: final checkpoint {final}")
    return 0
