"""Multi-host helpers: `jax.distributed` start-up from args or env, and per-host data feeding.

On a multi-host TPU slice every host runs the same `agro-sql ...` command (launch_tpu.sh sets AGRO_DISTRIBUTED=1);
`maybe_initialize_distributed()` must run before anything touches a JAX backend. Each host then loads only its
own rows of the global batch (`process_batch_slice`), runs its own executor pool over them, and the host-local
arrays are stitched into one global `jax.Array` (`global_batch_from_local`, or `place_batch` for a train batch) for
the jitted, sharded train step.

Env vars (explicit arguments win): AGRO_COORDINATOR_ADDRESS (host:port of process 0), AGRO_NUM_PROCESSES,
AGRO_PROCESS_ID, or AGRO_DISTRIBUTED=1 to let JAX auto-detect the cluster (TPU VMs, Slurm, Open MPI).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

ENV_AUTO = "AGRO_DISTRIBUTED"
ENV_COORDINATOR = "AGRO_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "AGRO_NUM_PROCESSES"
ENV_PROCESS_ID = "AGRO_PROCESS_ID"
_TRUE = ("1", "true", "yes", "auto")


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def maybe_initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> bool:
    """Starts `jax.distributed` when asked to (args or env); returns True if this is a multi-process run.

    Explicit: all three of coordinator_address / num_processes / process_id (args, else AGRO_* env vars).
    Auto: AGRO_DISTRIBUTED=1 and nothing explicit -> `jax.distributed.initialize()` detects TPU/Slurm/MPI.
    Otherwise (or num_processes == 1) it does nothing: a plain single-process run. Safe to call twice.
    """
    env = os.environ if env is None else env
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    coordinator_address = coordinator_address or env.get(ENV_COORDINATOR, "").strip() or None
    num_processes = num_processes if num_processes is not None else _env_int(env, ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(env, ENV_PROCESS_ID)
    explicit = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
    given = [k for k, v in explicit.items() if v is not None]
    if given:
        missing = [k for k in explicit if k not in given]
        if missing:
            raise ValueError(
                f"distributed init got {', '.join(given)} but not {', '.join(missing)}; pass all three "
                f"(args or {ENV_COORDINATOR}/{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID}) or set {ENV_AUTO}=1 to auto-detect"
            )
        if num_processes < 1:
            raise ValueError(f"num_processes must be >= 1, got {num_processes}")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
        if num_processes == 1:
            return False
        log.info("jax.distributed.initialize(%s, %d, %d)", coordinator_address, num_processes, process_id)
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif env.get(ENV_AUTO, "").strip().lower() in _TRUE:
        log.info("jax.distributed.initialize() with cluster auto-detection")
        jax.distributed.initialize()
    else:
        return False
    log.info("process %d of %d, %d local devices", jax.process_index(), jax.process_count(), jax.local_device_count())
    return jax.process_count() > 1


def is_main_process() -> bool:
    """Host 0 writes reports, metrics and logs; every host takes part in checkpoint saves."""
    return jax.process_index() == 0


def process_slice(n: int, *, index: int | None = None, count: int | None = None) -> slice:
    """Contiguous equal share [i*n/c, (i+1)*n/c) of n items for process i of c (e.g. examples of a dataset)."""
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    if n % count:
        raise ValueError(f"cannot split {n} items evenly over {count} processes; make it a multiple of {count}")
    per = n // count
    return slice(index * per, (index + 1) * per)


def batch_sharding(mesh: Mesh, batch_axes: str | Sequence[str] = ("data", "fsdp")) -> NamedSharding:
    """Leading (batch) dim split over `batch_axes`, the rest replicated."""
    axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
    return NamedSharding(mesh, PartitionSpec(axes))


def process_batch_slice(sharding: jax.sharding.Sharding, global_batch: int) -> slice:
    """Rows of a global batch whose shards live on this process's devices: the rows this host must feed.

    Reads the layout from the sharding itself, so it is right for any mesh device order. Raises if this
    process's rows are not one contiguous block (the mesh would interleave hosts along the batch).
    """
    index_map = sharding.addressable_devices_indices_map((global_batch,))
    rows = set()
    for index in index_map.values():
        rows.update(range(*index[0].indices(global_batch)))
    lo, hi = min(rows), max(rows) + 1
    if len(rows) != hi - lo:
        raise ValueError(f"process {jax.process_index()} owns non-contiguous batch rows {sorted(rows)}")
    return slice(lo, hi)


def global_batch_from_local(local_tree, sharding: jax.sharding.Sharding | Mesh, global_batch: int | None = None):
    """Host-local numpy batch (this host's rows, see `process_batch_slice`) -> global jax.Arrays.

    `sharding` is a NamedSharding for the leading dim or a Mesh (then `batch_sharding(mesh)`). Every host must
    call this with the same tree structure and local batch size (collective by construction).
    """
    if isinstance(sharding, Mesh):
        sharding = batch_sharding(sharding)

    def make(x):
        x = np.asarray(x)
        if x.ndim == 0:
            raise ValueError("global_batch_from_local needs arrays with a leading batch dim, got a scalar")
        rows = global_batch if global_batch is not None else x.shape[0] * jax.process_count()
        return jax.make_array_from_process_local_data(sharding, x, (rows, *x.shape[1:]))

    return jax.tree.map(make, local_tree)


def place_batch(tree, mesh: Mesh):
    """Host batch -> global arrays with the leading dim over the mesh's batch axes, for the jitted train steps.

    One process: `tree` is the whole batch (sharding.shard_batch). Several: `tree` holds only this host's rows and
    the global batch is their concatenation in process order, so the rows this host owns must be one contiguous
    block (checked via `process_batch_slice`; an interleaving mesh would silently mix up rows otherwise).
    """
    from agro_jax.scale.sharding import BATCH_AXES, shard_batch

    if jax.process_count() == 1:
        return shard_batch(tree, mesh)
    sharding = batch_sharding(mesh, tuple(a for a in BATCH_AXES if a in mesh.shape))
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return tree
    global_rows = np.shape(leaves[0])[0] * jax.process_count()
    rows = process_batch_slice(sharding, global_rows)
    if any(np.shape(x)[:1] != (rows.stop - rows.start,) for x in leaves):
        raise ValueError(f"place_batch: every leaf needs this host's {rows.stop - rows.start} rows as its leading dim")
    return global_batch_from_local(tree, sharding, global_rows)


def host_rows(global_tree, mesh: Mesh):
    """Inverse of `place_batch`: this host's rows of batch-leading global arrays, as numpy (collective: every host
    calls it). Gathers the whole arrays first: meant for small outputs such as sampled token ids."""
    full = host_gather(global_tree)
    leaves = jax.tree.leaves(full)
    if not leaves:
        return full
    sharding = batch_sharding(mesh, tuple(a for a in ("data", "fsdp") if a in mesh.shape))
    rows = process_batch_slice(sharding, np.shape(leaves[0])[0])
    return jax.tree.map(lambda x: np.asarray(x)[rows], full)


def process_max(values) -> np.ndarray:
    """Elementwise max of a small int vector over all hosts (collective; identity on one process), e.g. so every
    host picks the same bucketed shapes for a jitted call."""
    values = np.asarray(values, np.int64)
    if jax.process_count() == 1:
        return values
    return np.asarray(multihost_utils.process_allgather(values)).reshape(-1, *values.shape).max(0)


def any_host(flag: bool) -> bool:
    """True if `flag` is True on any host (collective): loops that run collective steps end on all hosts together."""
    return bool(process_max([int(bool(flag))])[0])


def host_gather(tree):
    """Global (sharded) or per-host arrays -> the full numpy value on every host (e.g. for metrics)."""
    return multihost_utils.process_allgather(tree, tiled=True)


def sync(name: str) -> None:
    """Barrier across all hosts (no-op cost on one host); `name` must match on every host."""
    multihost_utils.sync_global_devices(name)
