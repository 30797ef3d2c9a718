"""Metrics sinks: <workdir>/<stage>/metrics.jsonl, TensorBoard events (tensorboardX) and a tqdm progress bar.

One writer per stage; every value written is a plain float so the jsonl is trivially parseable by report tools.
"""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np
import tqdm


def _scalar(v) -> float:
    return float(np.asarray(v))


class MetricsWriter:
    """`write(step, dict)` appends one jsonl line and the same scalars to TensorBoard; `close()` flushes."""

    def __init__(self, out_dir, total_steps: int | None = None, initial_step: int = 0, desc: str = "", tb=True):
        self.dir = pathlib.Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        self._f = open(self.path, "a")  # noqa: SIM115 - closed in close()
        self._tb = None
        if tb:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tb"))
        self._bar = tqdm.tqdm(total=total_steps, initial=initial_step, desc=desc, dynamic_ncols=True)
        self._t0, self._c0 = time.time(), time.process_time()

    def write(self, step: int, metrics: dict) -> None:
        # time/cpu: this process's CPU seconds (all threads) since the writer opened; on a shared machine the wall
        # `time` grows with the load, CPU time much less, so both are kept
        row = {"step": int(step), "time": time.time() - self._t0, "time/cpu": time.process_time() - self._c0}
        for k, v in metrics.items():
            try:
                row[k] = _scalar(v)
            except (TypeError, ValueError) as e:
                raise ValueError(f"metric {k!r} at step {step} is not a scalar: {v!r}") from e
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step":
                    self._tb.add_scalar(k, v, int(step))
        short = {k: f"{row[k]:.3g}" for k in ("loss", "reward_mean", "ex", "kl") if k in row}
        self._bar.set_postfix(short, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()
        self._bar.close()


def read_metrics(path) -> list[dict]:
    """Reads a metrics.jsonl back (for tests and reports)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Timer:
    """Accumulates wall time per phase: `with timer("rollout"): ...`; `timer.pop()` -> {"time/rollout": s, ...}."""

    def __init__(self):
        self._t: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer._t[name] = timer._t.get(name, 0.0) + time.perf_counter() - self.t0

        return _Ctx()

    def pop(self) -> dict[str, float]:
        out = {f"time/{k}": v for k, v in self._t.items()}
        self._t = {}
        return out
