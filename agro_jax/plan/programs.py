"""The jitted programs of a training run, built from the config over abstract devices, AOT-compiled and measured.

Nothing is read or allocated: the policy is `nnx.eval_shape` of the model (with its LoRA adapters), the optimizer
state `jax.eval_shape` of its init, every argument a ShapeDtypeStruct carrying the NamedSharding that training gives
it (config.mesh rules over the topology's devices). The functions compiled are the training code's own:
rl/grpo.py make_update_step and make_logp_fn, train/sft.py make_sft_step, the rollout sampler's generate.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from agro_jax.errors import UsageError


@dataclasses.dataclass
class Program:
    name: str
    fn: object  # a jax.jit-wrapped function
    args: object  # tuple of ShapeDtypeStruct pytrees with shardings, or a function returning it
    shape: str  # e.g. "2560 rows = 40 x 64, T=8192"
    knobs: str  # config keys that move its memory
    resident_bytes: int = 0  # per chip: training state that stays in HBM while it runs but is not an argument
    steps: int = 1  # calls per optimizer step (FLOPs and the time bound are per step)
    static: dict = dataclasses.field(default_factory=dict)  # static keyword arguments of the jitted function
    on_compiled: object = None  # called with the compiled program (a later program's args may depend on it)


@dataclasses.dataclass
class Measured:
    name: str
    shape: str
    knobs: str
    compile_s: float
    argument_bytes: int = 0
    temp_bytes: int = 0
    output_bytes: int = 0
    alias_bytes: int = 0
    # The program's footprint: args + temp + out - alias, XLA's allocation (its temp buffer is sized for the whole
    # schedule), or its peak_memory_in_bytes if larger. The peak alone is often lower (8B GRPO update: 60.6 vs 84.4 G).
    peak_bytes: int = 0
    xla_peak_bytes: int = 0  # compiled.memory_analysis().peak_memory_in_bytes
    resident_bytes: int = 0
    total_bytes: int = 0  # peak + resident: what the chip must hold
    flops: float = 0.0  # per chip per optimizer step: matmul FLOPs of the jaxpr with loop trip counts
    xla_flops: float = 0.0  # per chip per call from compiled.cost_analysis() (a loop body counts once)
    fits: bool = False
    error: str = ""


# ------------------------------------------------------------------------------------------ abstract state


def model_config(config):
    """(QwenConfig, where the architecture came from). model.hf_path with a config.json: the checkpoint's own
    architecture (only the JSON is read); otherwise the config.model fields. dtype 'auto' means bfloat16 (a TPU)."""
    from agro_jax.model.hf_io import read_config
    from agro_jax.model.qwen import QwenConfig

    m = config.model
    runtime = {
        "dtype": "bfloat16" if m.dtype == "auto" else str(m.dtype),
        "param_dtype": "float32" if m.param_dtype == "auto" else str(m.param_dtype),
        "remat": m.get("remat", "none"),
        "logits_chunk": int(m.get("logits_chunk", 0) or 0),
        "scan_layers": bool(m.get("scan_layers", False)),
    }
    hf = str(m.get("hf_path", "") or "")
    if hf and (pathlib.Path(hf) / "config.json").is_file():
        return dataclasses.replace(read_config(hf), **runtime), f"{hf}/config.json"
    from ml_collections import ConfigDict

    d = ConfigDict(dict(m.to_dict(), **runtime))
    vocab = int(m.vocab_size) or int(config.tokenizer.get("vocab_size", 0) or 0)
    where = "config.model" + (f" (model.hf_path {hf} not found here)" if hf else "")
    return QwenConfig.from_config(d, vocab), where


def sds_tree(state, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def abstract_policy(config, mesh):
    """(graphdef, trained, frozen, rest, QwenConfig, source) as lora.split gives them in training, abstract."""
    from agro_jax.model import lora
    from agro_jax.model.qwen import Qwen
    from agro_jax.scale.sharding import state_shardings

    cfg, source = model_config(config)
    lcfg = lora.LoRAConfig.from_config(config.model.get("lora"))
    abstract = nnx.eval_shape(lambda: lora.add_adapters(Qwen(cfg, rngs=nnx.Rngs(0)), lcfg))
    graphdef, trained, frozen, rest = lora.split(abstract)
    rules = config.mesh.rules
    trees = [sds_tree(s, state_shardings(s, mesh, rules)) for s in (trained, frozen, rest)]
    return (graphdef, *trees, cfg, source)


def abstract_opt_state(optimizer, params, mesh):
    """The optimizer state of `params`: Adam moments sharded like their params, scalars (step counts) replicated."""
    state = jax.eval_shape(optimizer.init, params)
    shardings = optax.tree_map_params(
        optimizer,
        lambda _, s: s,
        state,
        jax.tree.map(lambda x: x.sharding, params),
        transform_non_params=lambda _: NamedSharding(mesh, PartitionSpec()),
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    return sds_tree(state, shardings)


def bytes_per_chip(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (a replicated leaf counts in full)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shard = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shard) * jnp.dtype(x.dtype).itemsize
    return total


def batch_arrays(mesh, rules, specs: dict) -> dict:
    """name -> ShapeDtypeStruct with the leading (batch) dim sharded by the 'batch' rule, as place_batch does."""
    from agro_jax.scale.sharding import logical_sharding

    out = {}
    for name, (shape, dtype) in specs.items():
        axes = ("batch",) + (None,) * (len(shape) - 1)
        out[name] = jax.ShapeDtypeStruct(shape, dtype, sharding=logical_sharding(axes, mesh, rules, shape))
    return out


# ------------------------------------------------------------------------------------------ programs


def _micro(rows: int, micro: int, what: str) -> int:
    if micro <= 0 or rows % micro:
        raise UsageError(f"{what}: {rows} rows not divisible by grad_accum_steps={micro}")
    return rows // micro


def rollout_held_bytes(config, mesh, policy) -> int:
    """Per chip: the GRPO training state that stays in HBM through the rollouts besides the policy params (the Adam
    state; the KL reference copy when beta > 0 without LoRA)."""
    from agro_jax.train import optim

    _, trained, frozen, *_ = policy
    opt = abstract_opt_state(optim.make_optimizer(config.grpo.optim), trained, mesh)
    ref = bytes_per_chip(trained) if float(config.grpo.beta) and not jax.tree.leaves(frozen) else 0
    return bytes_per_chip(opt) + ref


def training_programs(config, mesh, policy) -> list[Program]:
    """The GRPO update, its old/ref log-prob forward and the SFT step, with the config's batch shapes."""
    from agro_jax.rl import grpo
    from agro_jax.train import optim, sft

    graphdef, trained, frozen, rest, cfg, _ = policy
    rules, lora_on = config.mesh.rules, bool(jax.tree.leaves(frozen))
    t = int(config.rollout.max_total_len)
    i32, f32 = jnp.int32, jnp.float32
    g = config.grpo
    rows, micro = int(g.prompts_per_step) * int(g.group_size), int(g.optim.grad_accum_steps)
    b = _micro(rows, micro, "config.grpo.prompts_per_step x group_size")
    opt = optim.make_optimizer(g.optim)
    opt_state = abstract_opt_state(opt, trained, mesh)
    # beta > 0 without LoRA: training holds a second copy of the trained params as the KL reference
    ref_bytes = bytes_per_chip(trained) if float(g.beta) and not lora_on else 0
    bmt = (b, micro, t)
    specs = {
        "tokens_BxT": (bmt, i32),
        "valid_BxT": (bmt, bool),
        "loss_mask_BxT": (bmt, f32),
        "old_logp_BxT": (bmt, f32),
    }
    specs["adv_B"] = ((b, micro), f32)
    if float(g.beta):
        specs["ref_logp_BxT"] = (bmt, f32)
    batch = batch_arrays(mesh, rules, specs)
    shape = f"{rows} rows = {micro} x {b}, T={t}"
    grpo_knobs = "config.grpo.optim.grad_accum_steps (rows per micro-batch), config.model.remat, logits_chunk, mesh"
    temp = grpo.logp_temperature(config.rollout)
    progs = [
        Program("grpo_update", grpo.make_update_step(graphdef, rest, opt, g, temp), (trained, opt_state, batch, frozen),
                shape, grpo_knobs, resident_bytes=ref_bytes),
    ]  # fmt: skip
    forwards = int(bool(g.get("recompute_old_logp", False))) + int(bool(float(g.beta)))
    if forwards:
        logp_args = (trained, batch["tokens_BxT"], batch["valid_BxT"], frozen)
        progs.append(
            Program("grpo_logp", grpo.make_logp_fn(graphdef, rest, temp), logp_args,
                    shape + " (no grad)", "config.grpo.optim.grad_accum_steps, config.model.logits_chunk, mesh",
                    resident_bytes=bytes_per_chip(opt_state) + ref_bytes, steps=forwards)
        )  # fmt: skip
    s = config.sft
    srows, smicro = int(s.batch_size), int(s.optim.grad_accum_steps)
    sb = _micro(srows, smicro, "config.sft.batch_size")
    sopt = optim.make_optimizer(s.optim)
    sbatch = batch_arrays(mesh, rules, {"tokens_BxT": ((sb, smicro, t), i32), "valid_BxT": ((sb, smicro, t), bool),
                                        "loss_mask_BxT": ((sb, smicro, t), f32)})  # fmt: skip
    progs.append(
        Program("sft_step", sft.make_sft_step(graphdef, rest, sopt), (trained, abstract_opt_state(sopt, trained, mesh),
                sbatch, frozen), f"{srows} rows = {smicro} x {sb}, T={t}",
                "config.sft.optim.grad_accum_steps (rows per micro-batch), config.model.remat, logits_chunk, mesh")
    )  # fmt: skip
    return progs


# ------------------------------------------------------------------------------------------ measuring


def matmul_flops(jaxpr) -> float:
    """2*M*N*K of every dot_general in a (closed) jaxpr, nested jaxprs included: a scan's body times its length, a
    cond's costliest branch, a while loop's body once. XLA's cost_analysis counts every loop body once, so with
    config.model.scan_layers (or micro-batches) it under-counts by the trip counts; this does not."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
            continue
        times = float(eqn.params.get("length", 1)) if eqn.primitive.name == "scan" else 1.0
        for name, value in eqn.params.items():
            if name == "cond_jaxpr":
                continue
            subs = value if isinstance(value, tuple | list) else (value,)
            subs = [matmul_flops(x) for x in subs if hasattr(x, "eqns") or hasattr(getattr(x, "jaxpr", None), "eqns")]
            if subs:
                total += times * (max(subs) if eqn.primitive.name == "cond" else sum(subs))
    return total


_SIZE = re.compile(r"([\d.]+)\s*([KMGT])i?B?\b")
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _oom_required(message: str) -> int:
    """The bytes the compiler said it needed, from its out-of-memory message (the first size it names)."""
    m = _SIZE.search(message.split("exceeds")[0])
    return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else 0


def measure(prog: Program, mesh, hbm_bytes: int) -> Measured:
    """AOT-compile one program for the mesh's devices and read its memory and cost analyses."""
    n = mesh.devices.size
    out = Measured(prog.name, prog.shape, prog.knobs, 0.0, resident_bytes=prog.resident_bytes)
    t0 = time.perf_counter()
    args = prog.args() if callable(prog.args) else prog.args  # built late: may use an earlier program's shardings
    with jax.set_mesh(mesh):  # the model's activation constraints read the abstract mesh at trace time
        traced = prog.fn.trace(*args, **prog.static)
    out.flops = matmul_flops(traced.jaxpr) / n * prog.steps
    try:
        compiled = traced.lower().compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        out.compile_s = time.perf_counter() - t0
        out.error = str(e).strip().splitlines()[0][:300]
        out.peak_bytes = _oom_required(str(e))
        out.total_bytes = out.peak_bytes + out.resident_bytes
        return out
    out.compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    out.argument_bytes, out.temp_bytes = int(mem.argument_size_in_bytes), int(mem.temp_size_in_bytes)
    out.output_bytes, out.alias_bytes = int(mem.output_size_in_bytes), int(mem.alias_size_in_bytes)
    live = out.argument_bytes + out.temp_bytes + out.output_bytes - out.alias_bytes
    out.xla_peak_bytes = int(getattr(mem, "peak_memory_in_bytes", 0) or 0)
    out.peak_bytes = max(live, out.xla_peak_bytes)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    out.xla_flops = float((cost or {}).get("flops", 0.0))
    out.total_bytes = out.peak_bytes + out.resident_bytes
    out.fits = out.total_bytes <= hbm_bytes
    if prog.on_compiled is not None:
        prog.on_compiled(compiled)
    del compiled
    return out


def size_str(n: int) -> str:
    """Bytes as G/M/K (binary units), 3 significant digits."""
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(int(n))


def param_count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
