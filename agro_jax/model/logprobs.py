"""Log-probs of taken tokens and the policy entropy from hidden states, without ever holding B x T x V logits.

`token_stats(hidden_BxTxD, targets_BxT, head_fn, chunk)` scans over sequence chunks of C positions: each chunk's
logits B x C x V are made by `head_fn` (the model's lm_head), reduced to the log-prob of the target and the entropy in
float32, and dropped. Each chunk is rematerialized (`jax.checkpoint`), so the backward pass also holds one chunk's
logits at a time and recomputes them from the saved hidden chunk: peak logits memory is B x C x V instead of a few
copies of B x T x V (for Qwen's V = 151,936 and one 8192-token row, ~5 GB per copy). chunk=0 is the plain computation
(all logits at once), kept as the reference and for tiny vocabularies where one big matmul is faster.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def _stats(logits_BxCxV, targets_BxC, entropy: bool):
    """(logp_BxC, ent_BxC | None) of float32 logits: log_softmax picked at the target; -sum p log p."""
    logits_BxCxV = logits_BxCxV.astype(jnp.float32)
    logz_BxC = jax.nn.logsumexp(logits_BxCxV, axis=-1)
    # A masked sum, not take_along_axis: a gather along a vocab-sharded axis has no sharding rule (explicit mesh);
    # the compare-select fuses into the same pass over V as the logsumexp.
    hit_BxCxV = jnp.arange(logits_BxCxV.shape[-1], dtype=jnp.int32) == targets_BxC[..., None].astype(jnp.int32)
    picked_BxC = jnp.sum(jnp.where(hit_BxCxV, logits_BxCxV, 0.0), axis=-1)
    if not entropy:
        return picked_BxC - logz_BxC, None
    logp_BxCxV = logits_BxCxV - logz_BxC[..., None]
    return picked_BxC - logz_BxC, -jnp.sum(jnp.exp(logp_BxCxV) * logp_BxCxV, axis=-1)


def token_stats(
    hidden_BxTxD, targets_BxT, head_fn: Callable, chunk: int = 0, *, entropy: bool = True
) -> tuple[jax.Array, jax.Array | None]:
    """logp_BxT[b, t] = log softmax(head_fn(hidden[b, t]))[targets[b, t]] and ent_BxT[b, t] its entropy (None when
    entropy=False), float32. chunk > 0: C = chunk positions per scan step (T is padded up to a multiple of C)."""
    b, t, _ = hidden_BxTxD.shape
    if chunk <= 0 or chunk >= t:
        return _stats(head_fn(hidden_BxTxD), targets_BxT, entropy)
    n = -(-t // chunk)
    pad = n * chunk - t
    if pad:
        hidden_BxTxD = jnp.pad(hidden_BxTxD, ((0, 0), (0, pad), (0, 0)))
        targets_BxT = jnp.pad(targets_BxT, ((0, 0), (0, pad)))
    # [B, n*C, ...] -> [n, B, C, ...]: T is never sharded, so the reshape is local; the transpose keeps B's sharding.
    h_NxBxCxD = jnp.swapaxes(hidden_BxTxD.reshape(b, n, chunk, -1), 0, 1)
    y_NxBxC = jnp.swapaxes(targets_BxT.reshape(b, n, chunk), 0, 1)

    @jax.checkpoint
    def one(h_BxCxD, y_BxC):
        logp, ent = _stats(head_fn(h_BxCxD), y_BxC, entropy)
        return (logp, ent) if entropy else (logp, jnp.zeros((), jnp.float32))

    _, (logp_NxBxC, ent_NxBxC) = jax.lax.scan(lambda c, xy: (c, one(*xy)), None, (h_NxBxCxD, y_NxBxC))
    unchunk = lambda x_NxBxC: jnp.swapaxes(x_NxBxC, 0, 1).reshape(b, n * chunk)[:, :t]  # noqa: E731
    return unchunk(logp_NxBxC), (unchunk(ent_NxBxC) if entropy else None)


def next_token_stats(hidden_BxTxD, tokens_BxT, head_fn: Callable, chunk: int = 0, *, entropy: bool = True):
    """The training view: logp_BxT[t] = log p(tokens[t] | tokens[<t]) and ent_BxT[t] the entropy of that prediction,
    both 0 at t = 0. Hidden state t predicts token t+1; all T positions go through the head (the last one's target is
    a dummy 0 and its output is dropped), so T keeps the bucket size that `chunk` divides."""
    targets_BxT = jnp.concatenate([tokens_BxT[:, 1:], jnp.zeros_like(tokens_BxT[:, :1])], axis=1)
    logp, ent = token_stats(hidden_BxTxD, targets_BxT, head_fn, chunk, entropy=entropy)
    shift = lambda x: jnp.concatenate([jnp.zeros_like(x[:, :1]), x[:, :-1]], axis=1)  # noqa: E731
    return shift(logp), (shift(ent) if entropy else None)
