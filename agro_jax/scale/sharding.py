"""Mesh construction and logical-axis sharding (params carry `logical_axes` metadata; rules map them to mesh axes).

Meshes use AxisType.Auto: jax 0.10 `jax.make_mesh` defaults to Explicit axes, under which every contraction over a
sharded dim needs an explicit out_sharding; with Auto axes GSPMD propagates shardings from params and batch.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def resolve_shape(shape, n_devices: int) -> tuple[int, ...]:
    """Replace one -1 entry by the remaining device count; the product must equal n_devices."""
    shape = [int(s) for s in shape]
    if shape.count(-1) > 1:
        raise ValueError(f"mesh.shape={tuple(shape)}: at most one entry may be -1")
    known = math.prod(s for s in shape if s != -1)
    if known <= 0 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh.shape={tuple(shape)}: entries must be positive or -1")
    if -1 in shape:
        if n_devices % known:
            raise ValueError(f"mesh.shape={tuple(shape)}: {n_devices} devices not divisible by {known}")
        shape[shape.index(-1)] = n_devices // known
    if math.prod(shape) != n_devices:
        raise ValueError(f"mesh.shape={tuple(shape)} needs {math.prod(shape)} devices, have {n_devices}")
    return tuple(shape)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    """(data, fsdp, tensor) mesh from config.mesh (shape with an optional -1, axis_names) over all devices."""
    names = tuple(mesh_cfg.get("axis_names", AXES)) if hasattr(mesh_cfg, "get") else AXES
    raw = mesh_cfg.shape if hasattr(mesh_cfg, "shape") else mesh_cfg
    devices = list(devices) if devices is not None else jax.devices()
    shape = resolve_shape(raw, len(devices))
    if len(shape) != len(names):
        raise ValueError(f"mesh.shape={shape} and mesh.axis_names={names} differ in length")
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names), devices=devices)


def _rules_dict(rules) -> dict:
    out = {}
    for pair in rules or ():
        name, target = pair
        out.setdefault(str(name), target)  # first rule wins, like flax logical_axis_rules
    return out


def logical_to_spec(logical_axes, mesh: Mesh, rules, shape=None) -> PartitionSpec:
    """Logical names -> PartitionSpec. A mesh axis is used once (later dims replicate); with `shape`, a dim that the
    mesh axes do not divide is replicated instead (e.g. a vocab of 1031 on tensor=2)."""
    table, used, spec = _rules_dict(rules), set(), []
    for i, name in enumerate(logical_axes or ()):
        if name is not None and name not in table:
            raise ValueError(f"logical axis {name!r} has no sharding rule (rules: {sorted(table)})")
        target = table.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a in mesh.shape and a not in used and mesh.shape[a] > 1)
        if shape is not None and axes and shape[i] % math.prod(mesh.shape[a] for a in axes):
            axes = ()
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def logical_sharding(logical_axes: tuple, mesh: Mesh, rules, shape=None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, mesh, rules, shape))


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def state_shardings(state, mesh: Mesh, rules):
    """Same tree as `state` (nnx.State, abstract or real) with a NamedSharding per variable value."""

    def one(v):
        if not _is_var(v):
            return NamedSharding(mesh, PartitionSpec())
        axes = v.get_metadata().get("logical_axes")
        shape = tuple(v.shape) if hasattr(v, "shape") else None
        return v.replace(logical_sharding(axes, mesh, rules, shape) if axes else NamedSharding(mesh, PartitionSpec()))

    return jax.tree.map(one, state, is_leaf=_is_var)


def shard_model(model, mesh: Mesh, rules):
    """Moves every param of `model` to its rule-given NamedSharding (in place) and returns the model."""
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, state_shardings(state, mesh, rules)))
    return model


def batch_devices(mesh: Mesh) -> int:
    """How many ways a batch's leading dim is split: the product of the mesh's ('data', 'fsdp') sizes."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.shape)


def shard_batch(tree, mesh: Mesh):
    """Host arrays -> global arrays with the leading dim over ('data', 'fsdp'); scalars replicated.

    Single process: `tree` is the global batch. Multi-process: each process passes its own local rows (the global
    batch is their concatenation in process order)."""
    batch_axes, n = tuple(a for a in BATCH_AXES if a in mesh.shape), batch_devices(mesh)

    def one(path, x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if x.ndim == 0:
            return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))
        sharding = NamedSharding(mesh, PartitionSpec(batch_axes))
        if jax.process_count() > 1:
            return jax.make_array_from_process_local_data(sharding, np.asarray(x))
        if x.shape[0] % n:
            raise ValueError(f"shard_batch: {jax.tree_util.keystr(path)} leading dim {x.shape[0]} not divisible by {n}")
        return jax.device_put(x, sharding)

    return jax.tree_util.tree_map_with_path(one, tree)
