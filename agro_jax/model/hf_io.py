"""Hugging Face checkpoints <-> sharded Qwen: config.json + model.safetensors (or a sharded index).

Import never builds the full model on one device: the model is created abstractly (nnx.eval_shape) and each tensor
is read from a memory-mapped safetensors file, reshaped to our layout on host and placed shard by shard with
jax.make_array_from_callback (works multi-host too). safetensors files are read/written with a small numpy codec of
the documented format (8-byte header size, JSON header, raw little-endian data) because safetensors' numpy backend
has no bfloat16.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import shutil
import struct

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from agro_jax.model.qwen import Qwen, QwenConfig

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I64": np.int64,
          "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}  # fmt: skip
CODES = {np.dtype(v): k for k, v in DTYPES.items()}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "generation_config.json")  # fmt: skip
IGNORED = ("rotary_emb.inv_freq",)  # buffers some exporters write; recomputed from rope_theta


# ---------------------------------------------------------------------------------------------- safetensors codec


def read_safetensors_header(path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def read_tensor(path, name: str, header: dict, offset: int) -> np.ndarray:
    """One tensor as a read-only numpy memmap view (no copy until used)."""
    info = header[name]
    if info["dtype"] not in DTYPES:
        raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    dtype = np.dtype(DTYPES[info["dtype"]])
    shape = tuple(info["shape"])
    if end - start != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"{path}: tensor {name!r} byte size does not match its shape {shape} / dtype {dtype}")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset + start, shape=shape)


def write_safetensors(path, tensors: dict[str, np.ndarray]) -> None:
    header, pos = {"__metadata__": {"format": "pt"}}, 0
    for name, x in tensors.items():
        nbytes = x.size * x.dtype.itemsize
        header[name] = {"dtype": CODES[np.dtype(x.dtype)], "shape": list(x.shape), "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for x in tensors.values():
            f.write(np.ascontiguousarray(x).tobytes())


# ------------------------------------------------------------------------------------------------- name mapping


def tensor_map(cfg: QwenConfig) -> dict[tuple, tuple[str, object, object]]:
    """Our param path -> (HF tensor name, hf_to_ours(np), ours_to_hf(np))."""
    d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    ident = (lambda x: x, lambda x: x)
    tr = (lambda x: x.T, lambda x: x.T)

    def proj(heads):  # HF [heads*head_dim, embed] <-> ours [embed, heads, head_dim]
        return lambda x: x.T.reshape(d, heads, h), lambda x: x.reshape(d, heads * h).T

    o_proj = (lambda x: x.T.reshape(n, h, d), lambda x: x.reshape(n * h, d).T)  # HF [embed, heads*head_dim]

    def bias(heads):
        return lambda x: x.reshape(heads, h), lambda x: x.reshape(heads * h)

    out = {
        ("embed",): ("model.embed_tokens.weight", *ident),
        ("final_norm", "scale"): ("model.norm.weight", *ident),
    }
    if not cfg.tie_word_embeddings:
        out[("lm_head",)] = ("lm_head.weight", *tr)
    for i in range(cfg.num_layers):
        p, a = f"model.layers.{i}.", ("layers", i, "attn")
        out[("layers", i, "input_norm", "scale")] = (p + "input_layernorm.weight", *ident)
        out[("layers", i, "post_attn_norm", "scale")] = (p + "post_attention_layernorm.weight", *ident)
        out[(*a, "q")] = (p + "self_attn.q_proj.weight", *proj(n))
        out[(*a, "k")] = (p + "self_attn.k_proj.weight", *proj(k))
        out[(*a, "v")] = (p + "self_attn.v_proj.weight", *proj(k))
        out[(*a, "o")] = (p + "self_attn.o_proj.weight", *o_proj)
        if cfg.attention_bias:
            for name, heads in (("q", n), ("k", k), ("v", k)):
                out[(*a, f"{name}_bias")] = (p + f"self_attn.{name}_proj.bias", *bias(heads))
        if cfg.qk_norm:
            out[(*a, "q_norm", "scale")] = (p + "self_attn.q_norm.weight", *ident)
            out[(*a, "k_norm", "scale")] = (p + "self_attn.k_norm.weight", *ident)
        for name in ("gate", "up", "down"):
            out[("layers", i, "mlp", name)] = (p + f"mlp.{name}_proj.weight", *tr)
    return out


# ------------------------------------------------------------------------------------------------------ import


def read_config(path) -> QwenConfig:
    f = pathlib.Path(path) / "config.json"
    if not f.is_file():
        raise FileNotFoundError(f"{path}: config.json not found")
    try:
        hf = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{f}: invalid JSON ({e})") from e
    return QwenConfig.from_hf(hf)


def _tensor_files(path: pathlib.Path) -> dict[str, pathlib.Path]:
    """HF tensor name -> file, from model.safetensors.index.json or the single model.safetensors."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: missing 'weight_map'")
        return {k: path / v for k, v in weight_map.items()}
    single = path / "model.safetensors"
    if not single.is_file():
        raise FileNotFoundError(f"{path}: neither model.safetensors nor model.safetensors.index.json found")
    return {k: single for k in read_safetensors_header(single)[0]}


def load_hf_checkpoint(
    path,
    mesh=None,
    rules=None,
    *,
    dtype=None,
    param_dtype=None,
    remat: bool | str = "none",
    logits_chunk: int = 0,
    scan_layers: bool = False,
) -> tuple[Qwen, QwenConfig]:
    """(model, cfg) from a local HF Qwen2/Qwen3 dir or a GGUF file (converted once into the cache: see
    real_model.resolve_model_path); params placed per `rules` on `mesh` (default: device 0).
    dtype/param_dtype override the checkpoint's dtype (e.g. float32 on CPU); remat, logits_chunk, scan_layers: see
    QwenConfig."""
    from agro_jax.model.real_model import resolve_model_path
    from agro_jax.scale.sharding import state_shardings

    path = resolve_model_path(path)
    cfg = read_config(path)
    dtype, param_dtype = dtype or cfg.dtype, param_dtype or dtype or cfg.param_dtype
    cfg = dataclasses.replace(cfg, dtype=dtype, param_dtype=param_dtype, remat=remat, logits_chunk=int(logits_chunk))
    cfg = dataclasses.replace(cfg, scan_layers=bool(scan_layers))
    files = _tensor_files(path)
    headers = {f: read_safetensors_header(f) for f in sorted(set(files.values()))}
    abstract = nnx.eval_shape(lambda: Qwen(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    if mesh is not None:
        if rules is None:
            from configs.common import DEFAULT_RULES as rules
        shardings = dict(nnx.to_flat_state(state_shardings(state, mesh, rules)))
    mapping = tensor_map(cfg)
    flat = nnx.to_flat_state(state)
    expected = {mapping[key][0] for key, _ in flat}
    extra = sorted(n for n in files if n not in expected and not n.endswith(IGNORED) and n != "lm_head.weight")
    if extra:  # e.g. a bias the config does not call for, or more layers than num_hidden_layers
        raise ValueError(f"{path}: unexpected tensors for this {cfg.family} config.json (first: {extra[:3]})")
    for key, var in tqdm(flat, desc=f"load {path.name}", disable=len(flat) < 64, leave=False):
        hf_name, to_ours, to_hf = mapping[key]
        if hf_name not in files:
            raise ValueError(f"{path}: tensor {hf_name!r} is missing from the checkpoint")
        header, offset = headers[files[hf_name]]
        if hf_name not in header:
            raise ValueError(f"{files[hf_name]}: tensor {hf_name!r} listed in the index but not in the file")
        want = to_hf(np.broadcast_to(np.zeros((), np.float32), var.shape)).shape  # HF layout, no memory
        got = tuple(header[hf_name]["shape"])
        if got != tuple(want):
            raise ValueError(f"{path}: tensor {hf_name!r} has shape {got}, config.json implies {tuple(want)}")
        x = to_ours(read_tensor(files[hf_name], hf_name, header, offset))
        x = x.astype(var.dtype) if x.dtype != var.dtype else x
        sharding = shardings[key].get_value() if mesh is not None else _default_sharding()
        var.set_value(jax.make_array_from_callback(x.shape, sharding, lambda idx, x=x: np.asarray(x[idx])))
    return nnx.merge(graphdef, state), cfg


def _default_sharding():
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


# ------------------------------------------------------------------------------------------------------ export


def _host(x) -> np.ndarray:
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def save_hf_checkpoint(model, cfg: QwenConfig, out_dir, *, max_shard_bytes: int = 4 << 30) -> pathlib.Path:
    """Writes config.json + model.safetensors (or shards + index when larger than max_shard_bytes). Params are
    fetched one at a time; only process 0 writes. LoRA adapters (model/lora.py) are merged into their base weights
    (W + alpha/rank * A B), so the export is a plain checkpoint."""
    from agro_jax.model.lora import deltas

    out = pathlib.Path(out_dir)
    mapping, adapters = tensor_map(cfg), deltas(model)
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    flat = [(mapping[k][0], mapping[k][2], v, adapters.get(k)) for k, v in flat]
    shards, cur, size = [], {}, 0
    for name, to_hf, var, lora in tqdm(flat, desc="fetch params", disable=len(flat) < 64, leave=False):
        x = var.get_value()
        if lora is not None:
            x = (x.astype(np.float32) + lora.delta()).astype(x.dtype)
        x = to_hf(_host(x))
        if cur and size + x.nbytes > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[name], size = x, size + x.nbytes
    shards.append(cur)
    if jax.process_index() != 0:
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_hf(), indent=2))
    if len(shards) == 1:
        write_safetensors(out / "model.safetensors", shards[0])
        return out
    weight_map = {}
    for i, shard in enumerate(tqdm(shards, desc=f"write {out.name}", disable=len(shards) < 4, leave=False)):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(out / fname, shard)
        weight_map.update(dict.fromkeys(shard, fname))
    total = sum(x.nbytes for s in shards for x in s.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return out


# --------------------------------------------------------------------------------------------------------- CLI


def convert_arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--in", dest="src", help="HF checkpoint dir (config.json + safetensors)")
    src.add_argument("--gguf", default=None, help="a llama.cpp GGUF file of a Qwen2/Qwen3 model (dequantized)")
    p.add_argument("--out", dest="dst", required=True, help="output dir")
    p.add_argument("--dtype", default=None, help="cast params to this dtype (e.g. bfloat16, float32)")
    p.add_argument("--max-shard-mb", type=int, default=4096, help="largest safetensors shard written")
    p.epilog = ("examples:\n  agro-sql convert --in runs/tiny_cpu/grpo/hf --out /tmp/policy_bf16 --dtype bfloat16\n"
                "  agro-sql convert --gguf model-q4_k_m.gguf --out /tmp/model_hf")  # fmt: skip


def convert_main(config, args) -> int:
    """`agro-sql convert --in DIR --out DIR [--dtype bfloat16] [--max-shard-mb N]`: validates an HF Qwen checkpoint by
    importing it, re-exports it (optionally cast / re-sharded; tokenizer files copied along) and checks that the
    export re-imports bit-exactly. `--gguf FILE --out DIR`: a GGUF file -> HF dir (gguf_convert.convert_gguf), then
    loaded once as a check."""
    from agro_jax.errors import MissingInputError

    a = args
    if a.gguf:
        from agro_jax.model.gguf_convert import convert_gguf

        out = convert_gguf(a.gguf, a.dst, dtype=a.dtype or "float32")
        model, cfg = load_hf_checkpoint(out)
        n = sum(math.prod(v.shape) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
        print(f"convert: {cfg.family} {n:,} params, dtype {cfg.param_dtype}: {a.gguf} -> {out} (loads)")
        return 0
    if not (pathlib.Path(a.src) / "config.json").is_file():
        what = "no such directory" if not pathlib.Path(a.src).is_dir() else "no config.json in it"
        raise MissingInputError(f"--in {a.src}: {what}; give an HF checkpoint dir (config.json + *.safetensors), "
                                "e.g. <workdir>/grpo/hf")  # fmt: skip
    model, cfg = load_hf_checkpoint(a.src, dtype=a.dtype, param_dtype=a.dtype)
    n = sum(math.prod(v.shape) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    out = save_hf_checkpoint(model, cfg, a.dst, max_shard_bytes=a.max_shard_mb << 20)
    for f in TOKENIZER_FILES:  # keep the dir self-contained (model + tokenizer)
        if (pathlib.Path(a.src) / f).is_file():
            shutil.copy(pathlib.Path(a.src) / f, out / f)
    again, _ = load_hf_checkpoint(out)
    same = jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), nnx.to_pure_dict(nnx.state(model)),
                        nnx.to_pure_dict(nnx.state(again)))  # fmt: skip
    if not all(jax.tree.leaves(same)):
        print(f"convert: re-import of {out} differs from {a.src}")
        return 1
    print(f"convert: {cfg.family} {n:,} params, dtype {cfg.param_dtype}: {a.src} -> {out} (verified)")
    return 0
