"""Checkpointer: exact round trip of the whole state, keep-N, and atomicity under SIGKILL during an async save."""

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agro_jax.train.checkpoint import Checkpointer, load_params


def _state():
    params = {"w": jnp.arange(12.0).reshape(3, 4), "blocks": {"b": jnp.ones(4, jnp.bfloat16)}}
    opt = optax.adamw(1e-2)
    opt_state = opt.init(params)
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
    _, opt_state = opt.update(grads, opt_state, params)
    return params, opt_state


def test_round_trip_keep_n_and_data_state(tmp_path):
    params, opt_state = _state()
    key = jax.random.key(42)
    ckpt = Checkpointer(tmp_path / "c", keep=2, async_save=True)
    for step in (1, 2, 3):
        data = b'{"index": %d}' % step if step == 3 else {"epoch": 0, "pos": step}
        ckpt.save(step, params=params, opt_state=opt_state, rng_key=jax.random.fold_in(key, step), data_state=data)
    ckpt.wait()
    assert ckpt.all_steps() == [2, 3]
    p2, o2, k2, meta = ckpt.restore(params=params, opt_state=opt_state, rng_key=key)
    ckpt.close()
    assert meta["step"] == 3 and meta["data_state"] == b'{"index": 3}'  # grain DataLoader states are bytes
    for a, b in zip(jax.tree.leaves((params, opt_state)), jax.tree.leaves((p2, o2))):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (jax.random.key_data(k2) == jax.random.key_data(jax.random.fold_in(key, 3))).all()
    # Params-only load (init_from of a later stage) places values on the live tree.
    zeros = jax.tree.map(jnp.zeros_like, params)
    loaded = load_params(tmp_path / "c", zeros)
    np.testing.assert_array_equal(np.asarray(loaded["w"]), np.asarray(params["w"]))
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        Checkpointer(tmp_path / "empty").restore(params=params, opt_state=opt_state, rng_key=key)


KILL_DURING_SAVE = r"""
import os, signal, sys
import jax, jax.numpy as jnp, numpy as np
from agro_jax.train.checkpoint import Checkpointer
d = sys.argv[1]
small = {"w": jnp.ones((4,))}
ckpt = Checkpointer(d, keep=5, async_save=True)
ckpt.save(1, params=small, opt_state=(), rng_key=jax.random.key(0), data_state={"i": 1})
ckpt.wait()
big = {"w": jnp.asarray(np.random.default_rng(0).standard_normal((64, 1024, 1024), dtype=np.float32))}  # 256 MB
ckpt.save(2, params=big, opt_state=(), rng_key=jax.random.key(0), data_state={"i": 2})
os.kill(os.getpid(), signal.SIGKILL)  # dies while step 2 is still being written in the background
"""


def test_sigkill_during_async_save_never_leaves_a_loadable_partial_checkpoint(tmp_path):
    d = tmp_path / "c"
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(d)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    leftovers = [p.name for p in pathlib.Path(d).iterdir()]
    assert "1" in leftovers and "2" not in leftovers, leftovers  # step 2 exists only as a temporary, if at all
    ckpt = Checkpointer(d, keep=5)
    assert ckpt.latest_step() == 1
    _, _, _, meta = ckpt.restore(params={"w": jnp.zeros(4)}, opt_state=(), rng_key=jax.random.key(0))
    assert meta["data_state"] == {"i": 1}
    ckpt.close()
