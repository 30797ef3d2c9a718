"""GGUF (llama.cpp) files: the header and tensor table parsed with numpy (so a truncated file, a wrong magic, an
unsupported architecture or quant type each fail with one line naming it, before anything heavy) and tensors
dequantized one at a time with `gguf.quants.dequantize`. GGUF dims are listed innermost first, so the array is dims
reversed, which for Qwen is HF's (out, in) layout. Conversion to an HF dir is agro_jax/model/gguf_convert.py.
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import os
import pathlib
import struct

import numpy as np

from agro_jax.errors import UsageError

MAGIC = b"GGUF"
ARCHITECTURES = ("qwen2", "qwen3")
# Types this importer dequantizes (gguf.quants has numpy kernels for each; F32/F16 are plain views).
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NP_SCALARS = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
               7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}  # fmt: skip


class GGUFError(UsageError):
    """A GGUF file this importer cannot use; the message names the file and what is wrong."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]  # GGUF order (innermost first); numpy shape is reversed(dims)
    type_name: str
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.dims))


@dataclasses.dataclass(frozen=True)
class GGUFFile:
    path: pathlib.Path
    version: int
    metadata: dict
    tensors: dict[str, TensorInfo]

    @property
    def architecture(self) -> str:
        return self.metadata["general.architecture"]


# ------------------------------------------------------------------------------------------------------ reader


class _Cursor:
    def __init__(self, path, buf):
        self.path, self.buf, self.pos = path, buf, 0

    def take(self, n: int, what: str) -> int:
        if self.pos + n > len(self.buf):
            raise GGUFError(f"{self.path}: truncated GGUF: the file ({len(self.buf):,} bytes) ends inside {what}")
        start, self.pos = self.pos, self.pos + n
        return start

    def scalar(self, code: int, what: str):
        fmt = _SCALARS[code]
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.scalar(10, what)
        return bytes(self.buf[self.take(n, what) : self.pos]).decode("utf-8", errors="replace")

    def value(self, vtype: int, what: str):
        if vtype == 8:
            return self.string(what)
        if vtype in _SCALARS:
            return self.scalar(vtype, what)
        if vtype != 9:
            raise GGUFError(f"{self.path}: corrupt GGUF: metadata {what} has unknown value type {vtype}")
        itype, n = self.scalar(4, what), self.scalar(10, what)
        if itype in _NP_SCALARS:
            dt = np.dtype(_NP_SCALARS[itype]).newbyteorder("<")
            return np.frombuffer(self.buf, dt, n, self.take(n * dt.itemsize, what)).copy()
        return [self.value(itype, what) for _ in range(n)]


def read_gguf(path) -> GGUFFile:
    """Header, metadata and tensor index of a GGUF v2/v3 file, validated: magic, version, architecture (qwen2 |
    qwen3), every tensor's type supported, and the file long enough for every tensor's data."""
    import gguf

    path = pathlib.Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such GGUF file")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 4 or f.read(4) != MAGIC:
            f.seek(0)
            raise GGUFError(f"{path}: not a GGUF file (magic {f.read(4)!r}, expected {MAGIC!r})")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    cur = _Cursor(path, memoryview(buf))
    cur.pos = 4
    version = cur.scalar(4, "the version")
    if version not in (2, 3):
        swapped = version.to_bytes(4, "little") == (3).to_bytes(4, "big")
        raise GGUFError(f"{path}: GGUF version {version} is not supported (only 2 and 3, little-endian)"
                        + (" - this file is big-endian" if swapped else ""))  # fmt: skip
    n_tensors, n_kv = cur.scalar(10, "the tensor count"), cur.scalar(10, "the metadata count")
    metadata = {}
    for i in range(n_kv):
        key = cur.string(f"metadata entry {i}")
        metadata[key] = cur.value(cur.scalar(4, f"metadata {key!r}"), repr(key))
    arch = metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{path}: architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})")
    infos = []
    for i in range(n_tensors):
        name = cur.string(f"tensor info {i}")
        dims = tuple(cur.scalar(10, f"tensor {name!r}") for _ in range(cur.scalar(4, f"tensor {name!r}")))
        type_id, offset = cur.scalar(4, f"tensor {name!r}"), cur.scalar(10, f"tensor {name!r}")
        try:
            type_name = gguf.GGMLQuantizationType(type_id).name
        except ValueError:
            type_name = f"unknown type id {type_id}"
        if type_name not in SUPPORTED_TYPES:
            raise GGUFError(f"{path}: tensor {name!r} has quantization type {type_name}, which is not supported "
                            f"(supported: {', '.join(SUPPORTED_TYPES)})")  # fmt: skip
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
        if not dims or dims[0] % block:
            raise GGUFError(f"{path}: corrupt GGUF: tensor {name!r} dims {dims} do not fit {type_name} blocks")
        infos.append((name, dims, type_name, offset, math.prod(dims) // block * type_size))
    align = int(metadata.get("general.alignment", 32))
    data_start = -(-cur.pos // align) * align
    tensors = {}
    for name, dims, type_name, offset, nbytes in infos:
        end = data_start + offset + nbytes
        if end > size:
            raise GGUFError(f"{path}: truncated GGUF: tensor {name!r} data ends at byte {end:,} but the file has "
                            f"{size:,} bytes")  # fmt: skip
        tensors[name] = TensorInfo(name, dims, type_name, data_start + offset, nbytes)
    return GGUFFile(path, version, metadata, tensors)


def dequantize(g: GGUFFile, info: TensorInfo) -> np.ndarray:
    """float32 array of shape info.shape (HF layout for Qwen weights)."""
    import gguf

    rows = math.prod(info.dims[1:])
    raw = np.memmap(g.path, np.uint8, mode="r", offset=info.offset, shape=(rows, info.nbytes // rows))
    x = gguf.quants.dequantize(np.asarray(raw), gguf.GGMLQuantizationType[info.type_name])
    return np.asarray(x, np.float32).reshape(info.shape)
