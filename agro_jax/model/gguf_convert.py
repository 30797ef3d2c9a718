"""GGUF Qwen2/Qwen3 files -> a standard HF dir (config.json, model.safetensors, tokenizer files).

Tensors (read and dequantized by agro_jax/model/gguf_io.py) are streamed into model.safetensors one at a time;
llama.cpp permutes q/k only for llama-style archs, not qwen2/qwen3, so HF's layout is the array as read. The
tokenizer is rebuilt from the metadata: gpt2-style byte-level BPE with Qwen2's split regex and NFC normalizer (as
transformers' Qwen2Tokenizer), control tokens special, user-defined tokens added, chat template kept.

`agro-sql convert --gguf FILE --out DIR`; `resolve_model_path(p)` makes a GGUF file usable wherever an HF dir is
(converted once into a cache dir keyed by the file's path, size and mtime).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import shutil
import struct

import numpy as np

from agro_jax.model.gguf_io import GGUFError, GGUFFile, dequantize, read_gguf

GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight"}  # fmt: skip
BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    **{f"attn_{x}.{k}": f"self_attn.{x}_proj.{k}" for x in "qkv" for k in ("weight", "bias")},
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    **{f"ffn_{x}.weight": f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")},
}
SOURCE_FILE = "gguf_source.json"  # written last inside the tmp dir: a dir that has it is complete


# ------------------------------------------------------------------------------------------------ HF mapping


def hf_names(g: GGUFFile) -> dict[str, str]:
    """GGUF tensor name -> HF Qwen tensor name; unknown names are an error (never silently dropped)."""
    n_layers = int(g.metadata[f"{g.architecture}.block_count"])
    out = {}
    for name in g.tensors:
        parts = name.split(".", 2)
        if name in GLOBAL_NAMES:
            out[name] = GLOBAL_NAMES[name]
        elif parts[0] == "blk" and parts[1].isdigit() and int(parts[1]) < n_layers and parts[2] in BLOCK_NAMES:
            out[name] = f"model.layers.{parts[1]}.{BLOCK_NAMES[parts[2]]}"
        else:
            raise GGUFError(f"{g.path}: unexpected tensor {name!r} for a {g.architecture} GGUF")
    return out


def hf_config(g: GGUFFile) -> dict:
    """config.json for the file: architecture fields from the metadata, vocab from the embedding rows."""
    from agro_jax.model.qwen import QwenConfig

    m, a = g.metadata, g.architecture

    def req(key):
        if f"{a}.{key}" not in m:
            raise GGUFError(f"{g.path}: metadata {a}.{key} is missing")
        return m[f"{a}.{key}"]

    scaling = m.get(f"{a}.rope.scaling.type", "none")
    if scaling not in ("none", "linear") or float(m.get(f"{a}.rope.scaling.factor", 1.0)) != 1.0:
        raise GGUFError(f"{g.path}: rope scaling {scaling!r} is not supported (only none)")
    if "token_embd.weight" not in g.tensors:
        raise GGUFError(f"{g.path}: tensor 'token_embd.weight' is missing")
    hidden, heads = int(req("embedding_length")), int(req("attention.head_count"))
    cfg = QwenConfig(
        family=a,
        vocab_size=g.tensors["token_embd.weight"].shape[0],
        hidden_size=hidden,
        intermediate_size=int(req("feed_forward_length")),
        num_layers=int(req("block_count")),
        num_heads=heads,
        num_kv_heads=int(m.get(f"{a}.attention.head_count_kv", heads)),
        head_dim=int(m.get(f"{a}.attention.key_length", hidden // heads)),
        rope_theta=float(m.get(f"{a}.rope.freq_base", 10000.0)),
        rms_norm_eps=float(req("attention.layer_norm_rms_epsilon")),
        tie_word_embeddings="output.weight" not in g.tensors,
        max_position_embeddings=int(m.get(f"{a}.context_length", 32768)),
        attention_bias="blk.0.attn_q.bias" in g.tensors,
        qk_norm=a == "qwen3",
    )
    hf = cfg.to_hf()
    for k in ("bos", "eos", "padding"):
        if f"tokenizer.ggml.{k}_token_id" in m:
            hf[f"{'pad' if k == 'padding' else k}_token_id"] = int(m[f"tokenizer.ggml.{k}_token_id"])
    return hf


# -------------------------------------------------------------------------------------------------- tokenizer


def build_tokenizer(g: GGUFFile):
    """PreTrainedTokenizerFast from the metadata (gpt2-style byte-level BPE; qwen2 pre-tokenizer)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX  # = tokenizer.QWEN_SPLIT_REGEX

    m = g.metadata
    kind, pre = m.get("tokenizer.ggml.model"), m.get("tokenizer.ggml.pre", "default")
    if kind != "gpt2" or pre not in ("qwen2", "deepseek-r1-qwen"):
        raise GGUFError(f"{g.path}: tokenizer {kind!r} / pre-tokenizer {pre!r} is not supported (only gpt2 / qwen2)")
    tokens, types = list(m["tokenizer.ggml.tokens"]), list(m.get("tokenizer.ggml.token_type", []))
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    byte_char = {b: c for b, c in enumerate(_bytes_to_unicode())}
    vocab = {t if set(t) <= alphabet else "".join(byte_char[b] for b in t.encode()): i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise GGUFError(f"{g.path}: tokenizer.ggml.tokens has {len(tokens) - len(vocab)} duplicate tokens")
    merges = [tuple(x.split(" ", 1)) for x in m.get("tokenizer.ggml.merges", [])]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token=None, byte_fallback=False, fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # llama.cpp token types: 3 CONTROL (special), 4 USER_DEFINED (matched whole, not special)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == 3])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == 4])

    def special(key):
        i = m.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=special("bos"),
        eos_token=special("eos"),
        pad_token=special("padding") or special("eos"),
        unk_token=None,
        chat_template=m.get("tokenizer.chat_template"),
        add_bos_token=bool(m.get("tokenizer.ggml.add_bos_token", False)),
        clean_up_tokenization_spaces=False,
        model_max_length=int(m.get(f"{g.architecture}.context_length", 32768)),
    )


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table (index = byte)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


# ---------------------------------------------------------------------------------------------------- convert


def read_source(out_dir) -> dict | None:
    """The SOURCE_FILE record of a complete converted dir, or None (missing / partial / unreadable)."""
    try:
        return json.loads((pathlib.Path(out_dir) / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None


def file_sha256(path, chunk: int = 16 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _write_safetensors(path, g: GGUFFile, names: dict[str, str], dtype) -> None:
    """model.safetensors streamed one dequantized tensor at a time (the header is known from the shapes)."""
    header, pos = {"__metadata__": {"format": "pt"}}, 0
    for gname, hname in names.items():
        nbytes = math.prod(g.tensors[gname].shape) * dtype.itemsize
        header[hname] = {
            "dtype": {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[dtype.name],
            "shape": list(g.tensors[gname].shape),
            "data_offsets": [pos, pos + nbytes],
        }
        pos += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for gname in names:
            x = np.ascontiguousarray(dequantize(g, g.tensors[gname]).astype(dtype))
            f.write(x.reshape(-1).view(np.uint8).data)  # no copy (tobytes would double peak memory)
        f.flush()
        os.fsync(f.fileno())


def convert_gguf(src, out_dir, *, dtype: str = "float32", sha256: str | None = None) -> pathlib.Path:
    """Writes out_dir = config.json + model.safetensors (dtype) + tokenizer files + generation_config.json from a
    GGUF file. Everything is validated before writing; the dir is built as a tmp sibling and renamed into place, so
    out_dir is either absent or complete. An existing complete out_dir converted from the same bytes is kept as is;
    any other existing out_dir is an error. sha256: the file's, when the caller has checked it already."""
    import ml_dtypes

    g = read_gguf(src)
    names, config, tok = hf_names(g), hf_config(g), build_tokenizer(g)
    np_dtype = np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    if np_dtype.name not in ("float32", "float16", "bfloat16"):
        raise GGUFError(f"convert_gguf: dtype {dtype!r} must be float32, float16 or bfloat16")
    source = {"gguf": g.path.name, "size": g.path.stat().st_size, "sha256": sha256 or file_sha256(g.path),
              "dtype": np_dtype.name, "architecture": g.architecture}  # fmt: skip
    out = pathlib.Path(out_dir)
    if out.exists():
        if read_source(out) == source:
            return out
        raise GGUFError(f"{out}: already exists and is not a conversion of {g.path} ({np_dtype.name}); remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        config["dtype"] = np_dtype.name
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        _write_safetensors(tmp / "model.safetensors", g, names, np_dtype)
        tok.save_pretrained(str(tmp))
        tc = json.loads((tmp / "tokenizer_config.json").read_text())
        tc["tokenizer_class"] = "Qwen2Tokenizer"  # AutoTokenizer then rebuilds the same pipeline (NFC + split regex)
        (tmp / "tokenizer_config.json").write_text(json.dumps(tc, indent=2, ensure_ascii=False))
        gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2))
        for f in [*tmp.iterdir(), tmp]:
            _fsync(f)
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished the same conversion first
            if read_source(out) != source:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        _fsync(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def remove_stale_tmp(final: pathlib.Path) -> None:
    """Deletes `.<name>.tmp-<pid>` siblings of `final` left by killed runs (their pid is gone)."""
    for t in final.parent.glob(f".{final.name}.tmp-*"):
        pid = t.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(t) if t.is_dir() else t.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, someone else's


def _fsync(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
