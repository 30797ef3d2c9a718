"""GGUF import on tiny GGUF files written here with gguf.GGUFWriter from random transformers Qwen models: converted
dirs give transformers' own GGUF loading's logits, the conversion is atomic and reused, a GGUF is accepted as a model
path, and every kind of broken file fails with one line naming what is wrong (and leaves nothing behind)."""

import json
import os
import struct

import gguf
import numpy as np
import pytest
import torch
from helpers import batch, hf_logits, make_hf

from agro_jax.model.gguf_convert import convert_gguf, read_source
from agro_jax.model.gguf_io import GGUFError, read_gguf
from agro_jax.model.hf_io import load_hf_checkpoint
from agro_jax.model.qwen import make_causal_mask, positions_from_valid

Q = gguf.GGMLQuantizationType
# HF name -> llama.cpp name, written out here (not imported) so the importer's own table is really tested.
HF_TO_GGUF = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}  # fmt: skip
LAYER = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
         "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
         "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
         "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
         "self_attn.v_proj.bias": "attn_v.bias", "self_attn.q_norm.weight": "attn_q_norm.weight",
         "self_attn.k_norm.weight": "attn_k_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
         "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}  # fmt: skip
# 96 tokens (the tiny models' vocab): 93 byte-level symbols + 3 control tokens
TOKENS = [chr(c) for c in range(33, 124)] + ["Ġ", "Ċ", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MIXED = {"attn_q.weight": Q.Q8_0, "attn_k.weight": Q.Q5_0, "attn_v.weight": Q.Q4_1, "attn_output.weight": Q.F16,
         "ffn_gate.weight": Q.BF16, "ffn_up.weight": Q.Q5_1, "ffn_down.weight": Q.Q4_0,
         "token_embd.weight": Q.Q8_0}  # fmt: skip


def write_gguf(path, hf, *, arch=None, types=None, extra=()):
    """hf (a transformers Qwen) as a GGUF: llama.cpp names and metadata; `types` picks a quant type by tensor kind."""
    c = hf.config
    family = arch or c.model_type
    w = gguf.GGUFWriter(str(path), family)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    if family == "qwen3":  # llama.cpp writes head_dim only where it is not hidden / heads
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(TOKENS)
    w.add_token_types([1] * 93 + [3, 3, 3])
    w.add_token_merges([])
    w.add_eos_token_id(95)
    w.add_pad_token_id(93)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
    for name, t in hf.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        if name.startswith("model.layers."):
            i, rest = name.removeprefix("model.layers.").split(".", 1)
            name = f"blk.{i}.{LAYER[rest]}"
        else:
            name = HF_TO_GGUF[name]
        x = t.float().numpy()
        qtype = (types or {}).get(name.split(".", 2)[-1] if name.startswith("blk.") else name, Q.F32)
        if qtype == Q.F32:
            w.add_tensor(name, x)
        else:
            w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)  # bytes per row -> element shape
    for name, raw, qtype in extra:
        w.add_tensor(name, raw, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{name: (hf model, gguf path)}: qwen2 untied all-F32, qwen3 tied with 8 quant/float types. qwen3 has head_dim 128
    (!= hidden / heads = 8, so key_length is read): transformers' GGUF config mapping ignores key_length and assumes
    128, as every real Qwen3 has."""
    out = {}
    for name, family, tied, types in (("qwen2_f32", "qwen2", False, None), ("qwen3_mixed", "qwen3", True, MIXED)):
        d = tmp_path_factory.mktemp(name)
        hf = make_hf(family, tied, d / "hf", head_dim=128)
        out[name] = hf, write_gguf(d / f"{name}.gguf", hf, types=types)
    return out


@pytest.mark.parametrize("name", ["qwen2_f32", "qwen3_mixed"])
def test_converted_gguf_gives_transformers_gguf_logits(tiny, name, tmp_path):
    """Measured: max |ours - transformers(gguf)| = 2.7e-6 (qwen2, F32) / 3.3e-6 (qwen3, 8 types) on logits of scale
    ~4.3 (threshold 1e-5). The F32 file also gives the source model's logits (2.4e-6); the quantized one differs from
    its source by 0.63, so agreeing with transformers there tests the dequantization, not a lossless round trip."""
    from transformers import AutoModelForCausalLM

    hf, path = tiny[name]
    out = convert_gguf(path, tmp_path / "hf")
    model, cfg = load_hf_checkpoint(out)
    head_dim = 128 if name == "qwen3_mixed" else 8  # qwen3: key_length (not hidden / heads = 8)
    assert (cfg.family, cfg.tie_word_embeddings, cfg.head_dim) == (
        hf.config.model_type,
        name == "qwen3_mixed",
        head_dim,
    )
    ref = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    tokens, valid = batch(cfg.vocab_size)
    want = hf_logits(ref, tokens, valid)
    got = np.asarray(model(tokens, positions_from_valid(valid), make_causal_mask(valid))[0])
    assert np.abs(got[valid] - want[valid]).max() <= 1e-5
    if name == "qwen2_f32":
        assert np.abs(got[valid] - hf_logits(hf, tokens, valid)[valid]).max() <= 1e-5
    src = read_source(out)
    assert src["architecture"] == cfg.family and src["dtype"] == "float32" and src["size"] == path.stat().st_size
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert (tok_cfg["eos_token"], tok_cfg["pad_token"], tok_cfg["tokenizer_class"]) == (
        "<|im_end|>",
        "<|endoftext|>",
        "Qwen2Tokenizer",
    )


def test_convert_is_atomic_and_reused(tiny, tmp_path):
    _, path = tiny["qwen2_f32"]
    out = convert_gguf(path, tmp_path / "hf")
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf(path, out) == out and (out / "model.safetensors").stat().st_mtime_ns == stamp  # reused
    with pytest.raises(GGUFError, match="already exists and is not a conversion of"):
        convert_gguf(path, out, dtype="bfloat16")  # a different conversion never overwrites
    (tmp_path / "other").mkdir()
    with pytest.raises(GGUFError, match="already exists"):
        convert_gguf(path, tmp_path / "other")
    # a killed run's tmp dir (dead pid) is cleared by the next conversion; a broken file leaves nothing behind
    stale = tmp_path / ".bf16.tmp-999999999"
    stale.mkdir()
    convert_gguf(path, tmp_path / "bf16", dtype="bfloat16")
    assert not stale.exists() and read_source(tmp_path / "bf16")["dtype"] == "bfloat16"
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(GGUFError, match="truncated"):
        convert_gguf(bad, tmp_path / "cut")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bf16", "cut.gguf", "hf", "other"]


def _patched(src, dst, old: bytes, new: bytes):
    raw = src.read_bytes()
    assert raw.count(old) >= 1
    dst.write_bytes(raw.replace(old, new, 1))
    return dst


def test_broken_files_fail_with_one_line(tiny, tmp_path):
    hf, path = tiny["qwen2_f32"]
    raw = path.read_bytes()
    g = read_gguf(path)
    header_end = min(t.offset for t in g.tensors.values())
    cases = {
        "magic": (_patched(path, tmp_path / "m.gguf", b"GGUF", b"GGML"), "not a GGUF file (magic b'GGML'"),
        "version": (
            _patched(path, tmp_path / "v.gguf", b"GGUF" + struct.pack("<I", 3), b"GGUF" + struct.pack("<I", 1)),
            "GGUF version 1 is not supported",
        ),  # fmt: skip
        "arch": (_patched(path, tmp_path / "a.gguf", b"qwen2", b"llama"), "architecture 'llama' is not supported"),
        "empty": (tmp_path / "e.gguf", "not a GGUF file"),
    }
    (tmp_path / "e.gguf").write_bytes(b"")
    for cut in (6, 30, header_end - 40, len(raw) - 1):  # in the version, the metadata, a tensor info, the data
        (tmp_path / f"t{cut}.gguf").write_bytes(raw[:cut])
        cases[f"cut{cut}"] = (tmp_path / f"t{cut}.gguf", "truncated GGUF")
    q81 = np.zeros((hf.config.hidden_size, 40), np.uint8)  # one Q8_1 block (40 bytes) per row of 32
    unsupported = write_gguf(tmp_path / "q.gguf", hf, extra=[("blk.0.attn_x.weight", q81, Q.Q8_1)])
    cases["quant"] = (unsupported, "tensor 'blk.0.attn_x.weight' has quantization type Q8_1, which is not supported")
    unknown = write_gguf(
        tmp_path / "u.gguf", hf, extra=[("blk.0.attn_qkv.weight", np.zeros((4, 32), np.float32), Q.F32)]
    )
    cases["unknown"] = (unknown, "unexpected tensor 'blk.0.attn_qkv.weight'")
    for name, (f, want) in cases.items():
        with pytest.raises(GGUFError) as e:
            convert_gguf(f, tmp_path / f"out_{name}")
        msg = str(e.value)
        assert want in msg and str(f) in msg and "\n" not in msg, (name, msg)
        assert not (tmp_path / f"out_{name}").exists()
    assert not list(tmp_path.glob(".*tmp*"))


def test_gguf_file_accepted_as_model_path(tiny, tmp_path, monkeypatch, capsys):
    """model.hf_path / load_tokenizer / convert --gguf take the file; the cache dir is reused until the file changes."""
    from ml_collections import ConfigDict

    from agro_jax.cli import main
    from agro_jax.model.builder import build_model
    from agro_jax.model.real_model import gguf_cache_dir, resolve_model_path
    from agro_jax.model.tokenizer import load_tokenizer

    monkeypatch.setenv("AGRO_JAX_MODELS", str(tmp_path / "cache"))
    _, path = tiny["qwen3_mixed"]
    mc = ConfigDict({"hf_path": str(path), "dtype": "float32", "param_dtype": "float32", "remat": "none"})
    model, cfg = build_model(mc, None, None)
    cached = gguf_cache_dir(path)
    assert cached.parent == tmp_path / "cache" / "gguf" and read_source(cached) is not None
    stamp = (cached / "model.safetensors").stat().st_mtime_ns
    tok = load_tokenizer(str(path))
    assert tok.eos_token_id == 95 and tok.encode("<|im_end|>", add_special_tokens=False) == [95]
    assert resolve_model_path(path) == cached and (cached / "model.safetensors").stat().st_mtime_ns == stamp
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))  # a changed file gets a new dir
    assert resolve_model_path(path) != cached
    assert main(["convert", "--gguf", str(path), "--out", str(tmp_path / "cli")]) == 0
    assert "(loads)" in capsys.readouterr().out and read_source(tmp_path / "cli") is not None
    with pytest.raises(SystemExit) as e:
        main(["convert", "--gguf", str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "missing.gguf: no such GGUF file" in capsys.readouterr().err
