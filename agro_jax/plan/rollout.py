"""The rollout engine's device programs (rollout/sampler.py) at the shapes a paper-scale step gives them.

One rollout chunk (rollout/loop.py plan_chunks: whole groups, sized by rollout.max_cache_tokens per device) is what
lives on the chips at once. Its prompts are prefilled in calls of rollout.max_prefill_tokens (each distinct prompt
once, P = max_prompt_len bucket); its R rows then decode with a cache of slot_cap slots (max_total_len bucket), the
largest the session grows to. The decode program is the whole while-loop of one turn; its FLOPs are one token step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from agro_jax.plan.programs import Program, batch_arrays, bytes_per_chip, size_str


def _batch_shards(mesh) -> int:
    from agro_jax.scale.sharding import BATCH_AXES

    n = 1
    for a in BATCH_AXES:
        n *= mesh.shape.get(a, 1)
    return n


def chunk_rows(config, sampler, params, mesh) -> tuple[int, int]:
    """(rows R of the largest chunk as the engine pads it, its groups)."""
    from agro_jax.rollout.loop import plan_chunks
    from agro_jax.rollout.sampler import next_pow2

    g = int(config.grpo.group_size)
    chunks = plan_chunks(int(config.grpo.prompts_per_step), g, sampler, params, config.rollout)
    groups = max(len(c) for c in chunks)
    shards = _batch_shards(mesh)
    return -(-next_pow2(groups * g) // shards) * shards, groups


def rollout_programs(config, mesh, policy, held_bytes: int) -> list[Program]:
    """prefill and decode of the largest rollout chunk; `held_bytes`: the training state that stays in HBM during
    rollouts (programs.rollout_held_bytes). The decode cache takes the sharding the compiled prefill gives its cache
    (the session gathers rows from it, which keeps the layout)."""
    from agro_jax.model import lora
    from agro_jax.rollout.loop import slot_cap
    from agro_jax.rollout.sampler import Sampler, next_pow2

    graphdef, trained, frozen, rest, cfg, _ = policy
    rcfg, rules = config.rollout, config.mesh.rules
    params = lora.policy_state(trained, frozen)
    sampler = Sampler(graphdef, rest, cfg, None, rcfg)
    rows, groups = chunk_rows(config, sampler, params, mesh)
    cap = slot_cap(sampler, rcfg)
    p = min(next_pow2(int(rcfg.max_prompt_len), sampler.min_prompt_bucket), cap)
    # as KVSession: prompts per prefill call = max_prefill_tokens // P (a power of two), at most the chunk's groups
    ub = max(1, 1 << int(max(1, int(rcfg.get("max_prefill_tokens", 8192)) // p)).bit_length() - 1)
    shards = _batch_shards(mesh)
    ub = -(-min(ub, next_pow2(groups)) // shards) * shards
    i32 = jnp.int32
    pre = batch_arrays(mesh, rules, {"tok": ((ub, p), i32), "start": ((ub,), i32), "last": ((ub,), i32)})
    knobs = "config.rollout.max_cache_tokens (rows per chunk), max_prefill_tokens, max_total_len, mesh"
    seen = {}

    def keep_cache_spec(compiled):
        cache_out = jax.tree.leaves(compiled.output_shardings[0])
        seen["spec"] = cache_out[0].spec if isinstance(cache_out[0], NamedSharding) else None

    prefill = Program("rollout_prefill", sampler.prefill, (params, pre["tok"], pre["start"], pre["last"]),
                      f"{ub} prompts x P={p}", knobs, resident_bytes=held_bytes, static={"slots": p},
                      on_compiled=keep_cache_spec)  # fmt: skip

    def decode_args():
        abstract = jax.eval_shape(lambda: sampler.init_cache(rows, cap))
        spec = seen.get("spec") or _cache_spec(abstract, mesh)
        cache = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec)),
                             abstract)  # fmt: skip
        specs = {"start": ((rows,), i32), "lens": ((rows,), i32), "logits": ((rows, cfg.vocab_size), jnp.float32),
                 "budget": ((rows,), i32), "ids": ((rows,), i32)}  # fmt: skip
        d = batch_arrays(mesh, rules, specs)
        rep = NamedSharding(mesh, PartitionSpec())
        key = jax.eval_shape(lambda: jax.random.key(0))
        key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep)
        knob_args = tuple(jax.ShapeDtypeStruct((), dt, sharding=rep) for dt in (jnp.float32, jnp.float32, i32))
        return (params, cache, d["start"], d["lens"], d["logits"], d["budget"], d["ids"], key, knob_args)

    kv = bytes_per_chip(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(
        mesh, _cache_spec(x, mesh))), jax.eval_shape(lambda: sampler.init_cache(rows, cap))))  # fmt: skip
    decode = Program("rollout_decode", sampler.decode, decode_args,
                     f"{rows} rows ({groups} groups) x {cap} slots, KV {size_str(kv)}/chip", knobs,
                     resident_bytes=held_bytes, static={"max_new": sampler.max_new_tokens})  # fmt: skip
    return [prefill, decode]


def _cache_spec(x, mesh) -> PartitionSpec:
    """[layers, rows, slots, kv_heads, head_dim]: rows over the batch axes, kv heads over tensor (when they divide);
    used when the prefill did not compile (its own output sharding is preferred)."""
    from agro_jax.scale.sharding import BATCH_AXES

    x = jax.tree.leaves(x)[0]
    batch = tuple(a for a in BATCH_AXES if mesh.shape.get(a, 1) > 1)
    n = 1
    for a in batch:
        n *= mesh.shape[a]
    rows = batch if batch and x.shape[1] % n == 0 else None
    t = mesh.shape.get("tensor", 1)
    heads = "tensor" if t > 1 and x.shape[3] % t == 0 else None
    return PartitionSpec(None, rows, None, heads, None)
