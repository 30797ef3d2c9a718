"""Per-layer key/value cache for incremental decoding (one stacked array per K and V, layers leading)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class KVCache:
    """k/v for every layer: [layers, batch, slots, kv_heads, head_dim]. Slots are shared by the whole batch: the
    model writes T new entries at [cache_index, cache_index+T) and the caller's mask says which slots are valid."""

    k_LxBxSxKxH: jax.Array
    v_LxBxSxKxH: jax.Array

    @classmethod
    def init(cls, cfg, batch: int, max_len: int, dtype=None) -> KVCache:
        """Zeros for `cfg` (a QwenConfig); dtype defaults to the model compute dtype (str or jnp dtype)."""
        dtype = jnp.dtype(dtype if dtype is not None else cfg.dtype)
        shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

    @property
    def max_len(self) -> int:
        return self.k_LxBxSxKxH.shape[2]
