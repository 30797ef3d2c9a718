"""KVCache.write: per-row slots (the rollout engine's layout) equal the shared-slot write; past-the-end is dropped."""

import jax.numpy as jnp
import numpy as np

from agro_jax.model.kv_cache import KVCache
from agro_jax.model.qwen import QwenConfig


def test_per_row_write_matches_shared_write_and_drops_overflow():
    cfg = QwenConfig(num_layers=2, num_kv_heads=2, head_dim=4)
    rng = np.random.default_rng(0)
    k = jnp.asarray(rng.normal(size=(3, 2, 2, 4)), jnp.float32)
    v = k + 1.0
    shared = KVCache.init(cfg, 3, 6).write(1, k, v, 2)
    per_row = KVCache.init(cfg, 3, 6).write(1, k, v, jnp.asarray([2, 2, 2]))
    np.testing.assert_array_equal(shared.k_LxBxSxKxH, per_row.k_LxBxSxKxH)
    np.testing.assert_array_equal(shared.v_LxBxSxKxH, per_row.v_LxBxSxKxH)
    ragged = KVCache.init(cfg, 3, 6).write(0, k, v, jnp.asarray([0, 3, 5])).k_LxBxSxKxH
    np.testing.assert_array_equal(ragged[0, 0, 0:2], k[0])
    np.testing.assert_array_equal(ragged[0, 1, 3:5], k[1])
    np.testing.assert_array_equal(ragged[0, 2, 5], k[2, 0])  # slot 6 is past the end: dropped, not clamped
    assert float(jnp.abs(ragged[0, 2, :5]).sum()) == 0.0 and float(jnp.abs(ragged[1]).sum()) == 0.0
    taken = KVCache(ragged, ragged).take_rows(jnp.asarray([2, 2, 0]), max_len=8)
    assert taken.max_len == 8
    np.testing.assert_array_equal(taken.k_LxBxSxKxH[:, 1, :6], ragged[:, 2])
    assert float(jnp.abs(taken.k_LxBxSxKxH[:, :, 6:]).sum()) == 0.0
