"""GRPO in one place: rollout batch -> (filtered) advantages -> jitted, micro-batched clipped-surrogate update.

The update is functional over (params, opt_state) so it can be jitted once, sharded by the params' own shardings and
checkpointed as-is. With LoRA (model/lora.py) params are the adapters and the base weights come in as `frozen`, an
argument that gets no gradient and no optimizer state. Log-probs come from hidden states in chunks of
`model.cfg.logits_chunk` positions (model/logprobs.py), never as B x T x V logits. Loss maths lives in losses.py,
advantage estimators in advantages.py (both registries).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from agro_jax.rl import advantages, losses


def sequence_logprobs(
    model, tokens_BxT, valid_BxT, *, entropy: bool = True, chunk: int | None = None, temperature: float = 1.0
):
    """logp_BxT[t] = log p_T(tokens[t] | tokens[<t]) (0 at t=0) and the entropy of p_T at each predicted position
    (None when entropy=False), float32, where p_T = softmax(logits / temperature): GRPO trains the policy it samples
    from (rollout.temperature), as the sampler's logps are. The lm_head runs on chunks of `chunk` positions (default
    model.cfg.logits_chunk; 0: all at once)."""
    from agro_jax.model.logprobs import next_token_stats
    from agro_jax.model.qwen import make_causal_mask, positions_from_valid

    hidden_BxTxD, _ = model.hidden(tokens_BxT, positions_from_valid(valid_BxT), make_causal_mask(valid_BxT))
    chunk = int(model.cfg.logits_chunk) if chunk is None else int(chunk)
    head = model.logits if temperature == 1.0 else (lambda h: model.logits(h) / temperature)
    return next_token_stats(hidden_BxTxD, tokens_BxT, head, chunk, entropy=entropy)


def logp_temperature(rollout_cfg) -> float:
    """The temperature of the policy GRPO trains: the rollout's sampling temperature (1.0 for greedy rollouts)."""
    t = float(rollout_cfg.temperature)
    return t if t > 0 else 1.0


@dataclasses.dataclass
class Batch:
    """What the update consumes; built from a rollout.Rollout by `make_batch`. All arrays have leading dim B."""

    tokens_BxT: np.ndarray
    valid_BxT: np.ndarray
    loss_mask_BxT: np.ndarray
    old_logp_BxT: np.ndarray
    adv_B: np.ndarray
    ref_logp_BxT: np.ndarray | None = None

    def tree(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def filter_zero_variance(rewards_B, group_ids_B) -> np.ndarray:
    """bool_B keep-mask: drops rows of groups whose rewards are all equal (dynamic sampling, DAPO)."""
    return ~np.asarray(advantages.zero_variance_groups(rewards_B, group_ids_B))


def make_batch(rollout, grpo_cfg, keep_B=None, pad_id: int = 0) -> Batch:
    """Rollout -> Batch. Rows with keep_B False get an all-zero loss mask, so shapes (and the jit) stay fixed."""
    adv_B = np.asarray(advantages.compute_advantages(grpo_cfg.advantage, rollout.rewards_B, rollout.group_ids_B))
    mask = np.asarray(rollout.loss_mask_BxT, np.float32)
    if keep_B is not None:
        mask = mask * np.asarray(keep_B, np.float32)[:, None]
    valid = getattr(rollout, "valid_BxT", None)
    if valid is None:
        valid = np.asarray(rollout.tokens_BxT) != pad_id
    return Batch(
        tokens_BxT=np.asarray(rollout.tokens_BxT, np.int32),
        valid_BxT=np.asarray(valid, bool),
        loss_mask_BxT=mask,
        old_logp_BxT=np.asarray(rollout.old_logp_BxT, np.float32),
        adv_B=adv_B.astype(np.float32),
    )


def split_model(model):
    """(graphdef, params, rest): params are trained; rest (non-Param state) is carried unchanged. A model with LoRA
    adapters needs model.lora.split instead (adapters trained, base weights frozen)."""
    return nnx.split(model, nnx.Param, ...)


def merge(graphdef, params, frozen, rest):
    """The model from its trained params, the frozen state (LoRA base weights; None or empty without LoRA) and rest."""
    return nnx.merge(graphdef, params, *([frozen] if frozen is not None else []), rest)


def to_micro(tree: dict, micro_batches: int) -> dict:
    """Host-side [B, ...] -> [B/M, M, ...], the device layout of every batch array.

    The batch dim stays leading so shard_batch shards it over (data, fsdp); micro-batch m is rows m, M+m, 2M+m, ...
    Splitting inside jit instead would reshape a sharded dim, which explicit-axis meshes reject.
    """
    out = {}
    for k, v in tree.items():
        v = np.asarray(v)
        if v.shape[0] % micro_batches:
            raise ValueError(f"batch array {k}: {v.shape[0]} rows not divisible by grad_accum_steps={micro_batches}")
        out[k] = v.reshape(v.shape[0] // micro_batches, micro_batches, *v.shape[1:])
    return out


def _micro_major(tree):
    """[b, M, ...] -> [M, b, ...] inside jit (a transpose: shardings follow) so lax.scan walks the micro-batches."""
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), tree)


def make_logp_fn(graphdef, rest, temperature: float = 1.0):
    """Jitted (params, tokens_bxMxT, valid_bxMxT, frozen=None) -> logp_bxMxT (no grad) at `temperature`: old/ref
    logprobs, one micro-batch at a time so the reference forward never holds more activations than a training
    micro-batch."""

    @jax.jit
    def logp_fn(params, tokens, valid, frozen=None):
        model = merge(graphdef, params, frozen, rest)
        logp = lambda t, v: sequence_logprobs(model, t, v, entropy=False, temperature=temperature)[0]  # noqa: E731
        body = lambda _, tv: (None, logp(*tv))
        _, logp_MxbxT = jax.lax.scan(body, None, _micro_major((tokens, valid)))
        return jnp.swapaxes(logp_MxbxT, 0, 1)

    return logp_fn


def make_update_step(graphdef, rest, optimizer: optax.GradientTransformation, grpo_cfg, temperature: float = 1.0):
    """Jitted (params, opt_state, batch_tree, frozen=None) -> (params, opt_state, metrics); one optimizer step of the
    policy at `temperature` (logp_temperature(config.rollout): the one that sampled the batch).

    The batch comes in the to_micro layout [b, M, ...]; the M micro-batches are scanned in sequence, grads of the
    loss *sums* and the counts accumulated and divided once: the step equals the full-batch step for every
    aggregation mode.
    """
    beta = float(grpo_cfg.beta)
    loss_kw = dict(
        clip_low=float(grpo_cfg.clip_low),
        clip_high=float(grpo_cfg.clip_high),
        beta=beta,
        aggregation=grpo_cfg.aggregation,
    )

    def loss_fn(params, mb, frozen):
        model = merge(graphdef, params, frozen, rest)
        logp_BxT, ent_BxT = sequence_logprobs(model, mb["tokens_BxT"], mb["valid_BxT"], temperature=temperature)
        s, c, stats = losses.grpo_loss(
            logp_BxT,
            mb["old_logp_BxT"],
            mb["adv_B"],
            mb["loss_mask_BxT"],
            ref_logp_BxT=mb.get("ref_logp_BxT"),
            max_len=mb["tokens_BxT"].shape[1],
            **loss_kw,
        )
        stats["entropy"] = jnp.sum(jax.lax.stop_gradient(ent_BxT) * mb["loss_mask_BxT"])
        return s, (c, stats)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, batch, frozen=None):
        mbs = _micro_major(batch)

        def body(carry, mb):
            g_acc, s_acc, c_acc, st_acc = carry
            (s, (c, st)), g = grad_fn(params, mb, frozen)
            add = lambda a, x: a + x
            return (jax.tree.map(add, g_acc, g), s_acc + s, c_acc + c, jax.tree.map(add, st_acc, st)), None

        zero_g = jax.tree.map(jnp.zeros_like, params)
        first_mb = jax.tree.map(lambda x: x[0], mbs)
        zero_st = jax.tree.map(jnp.zeros_like, jax.eval_shape(loss_fn, params, first_mb, frozen)[1][1])
        (g, s, c, st), _ = jax.lax.scan(body, (zero_g, 0.0, 0.0, zero_st), mbs)
        denom = jnp.maximum(c, 1e-8)
        grads = jax.tree.map(lambda x: x / denom, g)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        # No agent token carries weight (every group filtered out): skip the step entirely, so Adam momentum and
        # weight decay don't move the policy on a batch without signal.
        has_signal = st["tokens"] > 0
        keep = lambda new, old: jnp.where(has_signal, new, old)
        params, opt_state = jax.tree.map(keep, new_params, params), jax.tree.map(keep, new_opt_state, opt_state)
        tok = jnp.maximum(st["tokens"], 1.0)
        metrics = {
            "loss": s / denom,
            "grad_norm": optax.tree.norm(grads),
            "clip_frac": st["clipped"] / tok,
            "ratio_mean": st["ratio"] / tok,
            "entropy": st["entropy"] / tok,
            "train_tokens": st["tokens"],
        }
        if beta:
            metrics["kl"] = st["kl"] / tok
        return params, opt_state, metrics

    return step
