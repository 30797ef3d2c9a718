"""The one trainer loop, big_vision style: restore -> [one_step -> metrics -> checkpoint]* -> final checkpoint.

Workdir layout (per stage):  <workdir>/<stage>/checkpoints/<step>/   orbax: params, opt state, rng, data state
                             <workdir>/<stage>/metrics.jsonl        one line per step (+ tb/ TensorBoard events)
                             <workdir>/<stage>/hf/                  final policy as HF safetensors (if export_hf)
A stage resumes from its own latest complete checkpoint. The stages themselves (what one step does) are in stages.py.
"""

from __future__ import annotations

import pathlib

import jax

from agro_jax.train import metrics, optim
from agro_jax.train.checkpoint import Checkpointer


def stage_dir(workdir, stage: str) -> pathlib.Path:
    return pathlib.Path(workdir) / stage


def train_loop(stage, config, stage_cfg, workdir, *, params, total_steps, data_iter, one_step, rng):
    """The canonical loop: restore -> [one_step -> metrics -> checkpoint]* -> final checkpoint.

    `one_step(step, params, opt_state, optimizer, rng_step) -> (params, opt_state, metrics)` owns the stage's data
    and update; the loop owns optimizer init, the per-step RNG (fold_in of the saved base key: resume-exact),
    checkpoints, metrics and the data-iterator state. Returns (params, path of the final checkpoint).
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
