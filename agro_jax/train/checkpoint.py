"""Orbax checkpointing of a whole training state, resumable bit-exactly.

A checkpoint holds: params and optimizer state (arrays, restored onto the shardings of the live targets), the step,
the RNG key (as raw key data) and the data-iterator state (grain get_state, JSON). Orbax writes every step into a
temporary directory and renames it only once all items are on disk, so a run killed mid-save (async saves
included) leaves no step directory that `latest_step()` would pick; stale temporaries are cleaned up on start.

Layout: <dir>/<step>/{state, meta}/ with state = {params, opt_state, rng} and meta = JSON {step, data_state}.

Damaged steps (a truncated or overwritten array file, an emptied _METADATA, ...): restoring the latest step (resume,
`load_params` for eval and init_from) falls back to the newest intact one, with one warning line per damaged step
naming the file; an explicitly requested damaged step, or no intact step at all, is one DamagedCheckpoint line.
tensorstore's late "Event loop is closed" callbacks, orbax's absl warnings about the damaged step and its abandoned
metadata coroutine's RuntimeWarning are silenced.
A resumed run moves a damaged step aside (<step>.damaged) so its own next save of that step number can land.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import pathlib
import re
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)
_LOCAL_FILE_RE = re.compile(r'local file "([^"]+)"')
_STATUS_RE = re.compile(r"\b([A-Z][A-Z_]{3,})\b")  # tensorstore/absl status codes: DATA_LOSS, OUT_OF_RANGE, ...
_JSON_FILES = ("state/_METADATA", "state/_sharding", "state/_CHECKPOINT_METADATA", "meta/metadata")


class DamagedCheckpoint(ValueError):
    """A checkpoint step (or every step) whose files cannot be read back; str() is one line naming the file."""


def _damage(step_dir: pathlib.Path, exc: BaseException) -> str | None:
    """One line: which file of `step_dir` is damaged and how; None if `exc` is not damage (e.g. a tree mismatch)."""
    if not (step_dir / "state" / "_METADATA").is_file():
        return f"{step_dir / 'state' / '_METADATA'}: missing"
    for f in [step_dir / n for n in _JSON_FILES] + sorted(step_dir.glob("state/array_metadatas/*")):
        if f.is_file():
            try:
                json.loads(f.read_bytes())
            except ValueError:
                return f"{f}: not valid JSON ({f.stat().st_size} bytes)"
    text = str(exc)
    files = _LOCAL_FILE_RE.findall(text)
    if files:
        code = _STATUS_RE.search(text)
        return f"{files[-1]}: unreadable ({code.group(1) if code else type(exc).__name__})"
    if isinstance(exc, (OSError, EOFError)) or "metadata" in text.lower():
        return f"{step_dir}: {type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"
    return None


def _quiet_unraisable(hook):
    def filtered(unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return  # tensorstore reads completing after orbax closed its event loop on a failed restore
        hook(unraisable)

    filtered.agro_quiet = True
    return filtered


class _QuietTensorstoreTasks(logging.Filter):
    """Drops asyncio's 'Task exception was never retrieved' for tensorstore reads of a damaged step: orbax abandons
    the sibling reads of a failed restore, and their tasks are logged when collected, possibly after we return."""

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and "tensorstore_spec" in str(exc))


@contextlib.contextmanager
def _quiet():
    """Silences what a failed restore of a damaged step sprays: asyncio tracebacks (late callbacks through
    sys.unraisablehook, abandoned tasks through the asyncio logger, possibly after we return: those filters stay)
    and absl warnings about missing metadata."""
    if not getattr(sys.unraisablehook, "agro_quiet", False):
        sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _QuietTensorstoreTasks) for f in asyncio_log.filters):
        asyncio_log.addFilter(_QuietTensorstoreTasks())
    # orbax's abandoned metadata read, collected whenever the GC runs (it broke the one-line output in one suite run)
    warnings.filterwarnings("ignore", r"coroutine 'Store\._get_array_metadatas' was never awaited", RuntimeWarning)
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)


def _steps(directory: pathlib.Path, step: int | None) -> list[int]:
    """Steps to try, newest first: [step] if given, else every complete step dir."""
    if step is not None:
        return [int(step)]
    steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / "state").is_dir()]
    if not steps:
        raise FileNotFoundError(f"no complete checkpoint in {directory}")
    return sorted(steps, reverse=True)


def first_intact(directory, steps: list[int], read, *, explicit: bool, warn: bool = True):
    """(step, read(step), damaged steps skipped) for the first step of `steps` that reads back; one warning line per
    damaged step skipped (warn=False: the caller's next read reports them). explicit: a single requested step, whose
    damage is an error instead of a fallback."""
    directory, damaged = pathlib.Path(directory), []
    for step in steps:
        try:
            with _quiet():
                value = read(step)
        except Exception as e:  # noqa: BLE001 -- classified by _damage; anything else is re-raised
            why = _damage(directory / str(step), e)
            if why is None:
                raise
            if explicit:
                raise DamagedCheckpoint(f"checkpoint step {step} is damaged: {why}") from None
            damaged.append((step, why))
            continue
        for bad, why in damaged if warn else ():
            log.warning("checkpoint step %d is damaged (%s); using step %d instead", bad, why, step)
        return step, value, [bad for bad, _ in damaged]
    listing = "; ".join(f"step {s}: {why}" for s, why in damaged)
    raise DamagedCheckpoint(f"no intact checkpoint in {directory} ({listing})")


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
        """Restores onto the structure/shardings of the given live targets. Returns (params, opt_state, rng, meta).

        step None: the newest intact step (damaged newer ones are skipped with a warning and moved aside)."""
        explicit = step is not None
        steps = [int(step)] if explicit else sorted(self.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no complete checkpoint in {self.dir}")
        target = {"params": params, "opt_state": opt_state, "rng": jax.random.key_data(rng_key)}
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        _, out, damaged = first_intact(self.dir, steps, lambda s: self._mgr.restore(s, args=args), explicit=explicit)
        for bad in damaged:  # the resumed run saves these step numbers again
            aside = self.dir / f"{bad}.damaged"
            while aside.exists():
                aside = aside.with_name(aside.name + "_")
            (self.dir / str(bad)).rename(aside)
        if damaged:
            self._mgr.reload()
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


def _restore_params_numpy(path):
    """The params subtree of a saved state as host numpy arrays; the optimizer state and RNG are not read."""
    from etils import epath

    handler, path = ocp.PyTreeCheckpointHandler(), epath.Path(path)
    try:
        params = handler.metadata(path).tree["params"]
        restore_args = {"params": jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), params)}
        args = ocp.args.PyTreeRestore(item={"params": params}, restore_args=restore_args, partial_restore=True)
        return handler.restore(path, args=args)["params"]
    finally:
        handler.close()


def load_params(directory, params, step: int | None = None):
    """Params only, from a Checkpointer directory (e.g. the SFT stage's), placed like the live `params` tree.

    Used for `init_from` (a new stage starts from another stage's weights with a fresh optimizer) and evaluation;
    the optimizer state is never read. step None: the newest intact step (see the module doc).
    """
    directory = pathlib.Path(directory).absolute()
    read = lambda s: _restore_params_numpy(directory / str(s) / "state")  # noqa: E731
    step, raw, _ = first_intact(directory, _steps(directory, step), read, explicit=step is not None)
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


def holds_adapters(directory, step: int | None = None) -> bool:
    """Whether a Checkpointer directory's params are LoRA adapters (a stage trained with config.model.lora), read
    from the checkpoint's metadata (no arrays loaded)."""
    from etils import epath

    directory = pathlib.Path(directory).absolute()
    read = lambda s: ocp.PyTreeCheckpointHandler().metadata(epath.Path(directory / str(s) / "state")).tree  # noqa: E731
    # the newest intact step, as load_params will pick (it reports any damaged one: no warning here)
    _, tree, _ = first_intact(directory, _steps(directory, step), read, explicit=step is not None, warn=False)
    paths = [_path_key(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree.get("params", {}))]
    return any(k.endswith("_lora") for p in paths for k in p)
