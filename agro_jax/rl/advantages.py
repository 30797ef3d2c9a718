"""Advantage estimators (registry, Tunix style): rewards_B + group_ids_B -> advantages_B.

Group statistics use segment sums over group ids, so groups may be any size and in any order (ids < B).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

ADVANTAGES: dict[str, Callable] = {}


def register(name: str):
    def wrap(fn):
        ADVANTAGES[name] = fn
        return fn

    return wrap


def group_stats(rewards_B: jax.Array, group_ids_B: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-row group mean, (population) std and group size, gathered back to B."""
    n = rewards_B.shape[0]
    r = rewards_B.astype(jnp.float32)
    count_G = jax.ops.segment_sum(jnp.ones_like(r), group_ids_B, num_segments=n)
    mean_G = jax.ops.segment_sum(r, group_ids_B, num_segments=n) / jnp.maximum(count_G, 1.0)
    mean_B = mean_G[group_ids_B]
    var_G = jax.ops.segment_sum((r - mean_B) ** 2, group_ids_B, num_segments=n) / jnp.maximum(count_G, 1.0)
    return mean_B, jnp.sqrt(var_G)[group_ids_B], count_G[group_ids_B]


@register("grpo")
def grpo_advantages(rewards_B, group_ids_B, eps: float = 1e-6):
    """(r - mean_group) / (std_group + eps): the GRPO normalisation."""
    mean_B, std_B, _ = group_stats(rewards_B, group_ids_B)
    return (rewards_B - mean_B) / (std_B + eps)


@register("drgrpo")
def drgrpo_advantages(rewards_B, group_ids_B, eps: float = 1e-6):
    """Dr.GRPO: r - mean_group, no std division (removes the difficulty bias of std scaling)."""
    del eps
    mean_B, _, _ = group_stats(rewards_B, group_ids_B)
    return rewards_B - mean_B


def compute_advantages(name: str, rewards_B, group_ids_B, eps: float = 1e-6) -> jax.Array:
    if name not in ADVANTAGES:
        raise ValueError(f"config.grpo.advantage={name!r} is not one of {sorted(ADVANTAGES)}")
    return ADVANTAGES[name](jnp.asarray(rewards_B, jnp.float32), jnp.asarray(group_ids_B, jnp.int32), eps)


def zero_variance_groups(rewards_B, group_ids_B, tol: float = 1e-6) -> jax.Array:
    """bool_B: True where the row's group has (numerically) identical rewards — no learning signal."""
    _, std_B, _ = group_stats(jnp.asarray(rewards_B, jnp.float32), jnp.asarray(group_ids_B, jnp.int32))
    return std_B <= tol
