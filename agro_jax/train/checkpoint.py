"""Orbax checkpointing of a whole training state, resumable bit-exactly.

A checkpoint holds: params and optimizer state (arrays, restored onto the shardings of the live targets), the step,
the RNG key (as raw key data) and the data-iterator state (grain get_state, JSON). Orbax writes every step into a
temporary directory and renames it only once all items are on disk, so a run killed mid-save (async saves
included) leaves no step directory that `latest_step()` would pick; stale temporaries are cleaned up on start.

Layout: <dir>/<step>/{state, meta}/ with state = {params, opt_state, rng} and meta = JSON {step, data_state}.
"""

from __future__ import annotations

import base64
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


def _encode_data_state(state):
    """grain iterator states are dicts or (DataLoader) bytes; keep both JSON-safe and round-trippable."""
    if isinstance(state, bytes):
        return {"bytes_b64": base64.b64encode(state).decode()}
    return {"json": state}


def _decode_data_state(blob):
    if blob is None:
        return None
    if "bytes_b64" in blob:
        return base64.b64decode(blob["bytes_b64"])
    return blob["json"]


class Checkpointer:
    """Thin wrapper over ocp.CheckpointManager with the one state layout used by train.py."""

    def __init__(self, directory, *, keep: int = 2, async_save: bool = True):
        self.dir = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self._mgr = ocp.CheckpointManager(self.dir, options=options)

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mgr.all_steps())

    def save(self, step: int, *, params, opt_state, rng_key, data_state=None, force: bool = False) -> bool:
        state = {"params": params, "opt_state": opt_state, "rng": jax.random.key_data(rng_key)}
        meta = {"step": int(step), "data_state": None if data_state is None else _encode_data_state(data_state)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        return self._mgr.save(int(step), args=args, force=force)

    def restore(self, step: int | None = None, *, params, opt_state, rng_key):
        """Restores onto the structure/shardings of the given live targets. Returns (params, opt_state, rng, meta)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.dir}")
        target = {"params": params, "opt_state": opt_state, "rng": jax.random.key_data(rng_key)}
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        out = self._mgr.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        )
        st, meta = out["state"], dict(out["meta"])
        rng = jax.random.wrap_key_data(jnp.asarray(np.asarray(st["rng"])), impl=jax.random.key_impl(rng_key))
        meta["data_state"] = _decode_data_state(meta.get("data_state"))
        return st["params"], st["opt_state"], rng, meta

    def wait(self) -> None:
        self._mgr.wait_until_finished()

    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._mgr.close()


def export_hf(model, model_cfg, out_dir) -> pathlib.Path:
    """Writes the policy as a Hugging Face safetensors checkpoint (agro_jax/model/hf_io.py)."""
    from agro_jax.model.hf_io import save_hf_checkpoint

    out = pathlib.Path(out_dir)
    save_hf_checkpoint(model, model_cfg, out)
    return out


def _path_key(path) -> tuple[str, ...]:
    out = []
    for p in path:
        k = getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))
        out.append(str(k))
    return tuple(x for x in out if x != "value")


def _restore_numpy(path):
    """Any saved state tree as host numpy arrays (no device placement, no sharding file needed)."""
    ckptr = ocp.PyTreeCheckpointer()
    tree = ckptr.metadata(path).item_metadata.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))


def load_params(directory, params, step: int | None = None):
    """Params only, from a Checkpointer directory (e.g. the SFT stage's), placed like the live `params` tree.

    Used for `init_from`: a new stage starts from another stage's weights with a fresh optimizer.
    """
    directory = pathlib.Path(directory).absolute()
    if step is None:
        steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / "state").is_dir())
        if not steps:
            raise FileNotFoundError(f"no complete checkpoint in {directory}")
        step = steps[-1]
    raw = _restore_numpy(directory / str(step) / "state")["params"]
    by_path = {_path_key(p): v for p, v in jax.tree_util.tree_leaves_with_path(raw)}

    def pick(path, live):
        key = _path_key(path)
        if key not in by_path:
            raise KeyError(f"checkpoint {directory}/{step} has no parameter {'/'.join(key)}")
        value = np.asarray(by_path[key])
        if value.shape != live.shape:
            raise ValueError(f"parameter {'/'.join(key)}: checkpoint shape {value.shape} != model {live.shape}")
        return jax.device_put(value.astype(live.dtype), live.sharding)

    return jax.tree_util.tree_map_with_path(pick, params)
