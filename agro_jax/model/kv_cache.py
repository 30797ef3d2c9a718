"""Per-layer key/value cache for incremental decoding (one stacked array per K and V, layers leading)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class KVCache:
    """k/v for every layer: [layers, batch, slots, kv_heads, head_dim]. The model writes T new entries per row with
    `write`: at [cache_index, cache_index+T) for the whole batch (a scalar index: left-padded batches that share
    slots), or row b at [cache_index[b], cache_index[b]+T) (an int vector: each row its own contiguous length, as the
    rollout engine keeps them across turns). The caller's attention mask says which slots are valid."""

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

    def write(self, layer, k_BxTxKxH, v_BxTxKxH, index) -> KVCache:
        """The cache with layer `layer`'s new entries stored. A scalar index is one dynamic_update_slice (its start is
        clamped to fit, as lax does); a per-row index [B] is a scatter whose slots past the end are dropped, so a
        finished row parked at the last slot can never overwrite a valid entry."""
        index = jnp.asarray(index, jnp.int32)
        ck, cv = self.k_LxBxSxKxH, self.v_LxBxSxKxH
        if index.ndim == 0:
            idx = (layer, 0, index, 0, 0)
            ck = jax.lax.dynamic_update_slice(ck, k_BxTxKxH[None].astype(ck.dtype), idx)
            cv = jax.lax.dynamic_update_slice(cv, v_BxTxKxH[None].astype(cv.dtype), idx)
        else:
            b, t = k_BxTxKxH.shape[:2]
            rows_Bx1 = jnp.arange(b, dtype=jnp.int32)[:, None]
            slots_BxT = index[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
            ck = ck.at[layer, rows_Bx1, slots_BxT].set(k_BxTxKxH.astype(ck.dtype), mode="drop")
            cv = cv.at[layer, rows_Bx1, slots_BxT].set(v_BxTxKxH.astype(cv.dtype), mode="drop")
        return self.replace(k_LxBxSxKxH=ck, v_LxBxSxKxH=cv)

    def take_rows(self, rows_R, max_len: int | None = None) -> KVCache:
        """Rows `rows_R` (gathered; repeats allowed: G samples sharing one prefilled prompt; None: all rows as they
        are) with the slot axis padded with zeros up to max_len (never cut)."""
        pad = 0 if max_len is None else max_len - self.max_len
        if pad < 0:
            raise ValueError(f"KVCache.take_rows: max_len={max_len} is below the cache's {self.max_len} slots")

        def f(x):
            x = x if rows_R is None else jnp.take(x, rows_R, axis=1)
            return jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0), (0, 0))) if pad else x

        return KVCache(f(self.k_LxBxSxKxH), f(self.v_LxBxSxKxH))
