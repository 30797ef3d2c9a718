"""Optimizer from a config.<stage>.optim dict (configs/common.py:optim_config): AdamW, warmup + cosine, grad clip.

Gradient accumulation is NOT done here (no optax.MultiSteps): the train steps accumulate (grad of loss_sum, count)
over micro-batches and divide once, which is exact for every aggregation mode.
"""

from __future__ import annotations

import optax


def make_schedule(cfg) -> optax.Schedule:
    lr, warmup, total = float(cfg.learning_rate), int(cfg.warmup_steps), int(cfg.total_steps)
    if cfg.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif cfg.schedule == "cosine":
        decay_steps = max(total - warmup, 1)
        main = optax.cosine_decay_schedule(lr, decay_steps, alpha=float(cfg.end_lr_factor))
    else:
        raise ValueError(f"optim.schedule={cfg.schedule!r} must be 'cosine' or 'constant'")
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def make_optimizer(cfg) -> optax.GradientTransformation:
    """clip_by_global_norm -> AdamW(schedule). grad_clip_norm <= 0 disables clipping."""
    parts = []
    if float(cfg.grad_clip_norm) > 0:
        parts.append(optax.clip_by_global_norm(float(cfg.grad_clip_norm)))
    parts.append(
        optax.adamw(make_schedule(cfg), b1=float(cfg.b1), b2=float(cfg.b2), weight_decay=float(cfg.weight_decay))
    )
    return optax.chain(*parts)
