"""The GRPO policy loss, written out by hand, plus its aggregation registry.

Every aggregation returns (loss_sum, count) so that micro-batches add exactly: the final loss of a batch is
sum(loss_sum) / sum(count) over its micro-batches, identical to computing it on the whole batch at once.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

AGGREGATIONS: dict[str, Callable] = {}


def register(name: str):
    def wrap(fn):
        AGGREGATIONS[name] = fn
        return fn

    return wrap


@register("token_mean")
def token_mean(loss_BxT, mask_BxT, max_len: int):
    """Mean over all agent tokens of the batch (DAPO): long sequences weigh more."""
    del max_len
    return jnp.sum(loss_BxT * mask_BxT), jnp.sum(mask_BxT)


@register("seq_mean_token_mean")
def seq_mean_token_mean(loss_BxT, mask_BxT, max_len: int):
    """Original GRPO: mean over tokens of each sequence, then over sequences (empty sequences don't count)."""
    del max_len
    tokens_B = jnp.sum(mask_BxT, axis=-1)
    seq_B = jnp.sum(loss_BxT * mask_BxT, axis=-1) / jnp.maximum(tokens_B, 1.0)
    return jnp.sum(seq_B), jnp.sum((tokens_B > 0).astype(jnp.float32))


@register("drgrpo_constant")
def drgrpo_constant(loss_BxT, mask_BxT, max_len: int):
    """Dr.GRPO: divide the token sum by a constant, max_len * num_seqs (no length bias)."""
    return jnp.sum(loss_BxT * mask_BxT), jnp.float32(max_len * loss_BxT.shape[0])


def k3_kl(logp_BxT, ref_logp_BxT):
    """Schulman's k3 estimator of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1 >= 0, unbiased."""
    d = ref_logp_BxT - logp_BxT
    return jnp.exp(d) - d - 1.0


def grpo_token_loss(logp_BxT, old_logp_BxT, adv_B, *, clip_low, clip_high, beta=0.0, ref_logp_BxT=None):
    """Per-token clipped surrogate (+ beta * k3 KL). Returns (loss_BxT, aux dict of per-token stats)."""
    ratio_BxT = jnp.exp(logp_BxT - old_logp_BxT)
    adv_Bx1 = adv_B[:, None]
    unclipped = ratio_BxT * adv_Bx1
    clipped = jnp.clip(ratio_BxT, 1.0 - clip_low, 1.0 + clip_high) * adv_Bx1
    loss_BxT = -jnp.minimum(unclipped, clipped)
    # A token is "clipped" when the clipped branch is the active one (its gradient is zero).
    aux = {"ratio": ratio_BxT, "clipped": (clipped < unclipped).astype(jnp.float32)}
    if beta:
        if ref_logp_BxT is None:
            raise ValueError("grpo_token_loss: beta > 0 needs ref_logp_BxT")
        kl_BxT = k3_kl(logp_BxT, ref_logp_BxT)
        loss_BxT = loss_BxT + beta * kl_BxT
        aux["kl"] = kl_BxT
    return loss_BxT, aux


def grpo_loss(
    logp_BxT,
    old_logp_BxT,
    adv_B,
    mask_BxT,
    *,
    clip_low: float,
    clip_high: float,
    beta: float = 0.0,
    ref_logp_BxT=None,
    aggregation: str = "token_mean",
    max_len: int | None = None,
):
    """GRPO loss of one (micro-)batch: returns (loss_sum, count, stats) with stats as (sum, token count) pairs."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"config.grpo.aggregation={aggregation!r} is not one of {sorted(AGGREGATIONS)}")
    mask_BxT = mask_BxT.astype(jnp.float32)
    loss_BxT, aux = grpo_token_loss(
        logp_BxT, old_logp_BxT, adv_B, clip_low=clip_low, clip_high=clip_high, beta=beta, ref_logp_BxT=ref_logp_BxT
    )
    max_len = logp_BxT.shape[1] if max_len is None else max_len
    loss_sum, count = AGGREGATIONS[aggregation](loss_BxT, mask_BxT, max_len)
    stats = {k: jnp.sum(jax.lax.stop_gradient(v) * mask_BxT) for k, v in aux.items()}
    stats["tokens"] = jnp.sum(mask_BxT)
    return loss_sum, count, stats
