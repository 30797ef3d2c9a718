"""HF checkpoint import/export: round trips, transformers loads our export, sharded placement, bad dirs fail clearly."""

import json
import shutil

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from helpers import batch, hf_logits, make_hf

from agro_jax.model.hf_io import (
    load_hf_checkpoint,
    read_safetensors_header,
    save_hf_checkpoint,
    write_safetensors,
)
from agro_jax.model.qwen import make_causal_mask, positions_from_valid
from agro_jax.scale.sharding import logical_to_spec, make_mesh
from configs.common import DEFAULT_RULES, mesh_config


def flat(model):
    return {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """qwen2 (untied, bias) and qwen3 (tied, qk-norm) HF dirs written by transformers."""
    out = {}
    for family, tied in (("qwen2", False), ("qwen3", True)):
        d = tmp_path_factory.mktemp(family)
        make_hf(family, tied, d)
        out[family] = d
    return out


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_export_reimport_bit_exact_and_transformers_loads_it(src, family, tmp_path):
    from transformers import AutoModelForCausalLM

    model, cfg = load_hf_checkpoint(src[family])
    save_hf_checkpoint(model, cfg, tmp_path)
    again, cfg2 = load_hf_checkpoint(tmp_path)
    assert cfg2 == cfg
    a, b = flat(model), flat(again)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # our export in transformers gives our logits
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    assert type(hf).__name__ == {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[family]
    tokens, valid = batch(cfg.vocab_size)
    want = hf_logits(hf, tokens, valid)
    got, _ = model(tokens, positions_from_valid(valid), make_causal_mask(valid))
    assert np.abs(np.asarray(got)[valid] - want[valid]).max() <= 1e-4


def test_sharded_files_bf16_and_mesh_placement(src, tmp_path):
    model, cfg = load_hf_checkpoint(src["qwen2"], dtype="bfloat16")
    assert cfg.param_dtype == "bfloat16" and model.embed[...].dtype == jax.numpy.bfloat16
    save_hf_checkpoint(model, cfg, tmp_path, max_shard_bytes=4096)  # forces several files + index
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    header, _ = read_safetensors_header(tmp_path / index["weight_map"]["model.embed_tokens.weight"])
    assert header["model.embed_tokens.weight"]["dtype"] == "BF16"
    mesh = make_mesh(mesh_config((2, 2, 2)))
    again, _ = load_hf_checkpoint(tmp_path, mesh=mesh, rules=DEFAULT_RULES)
    a, b = flat(model), flat(again)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    q = again.layers[1].attn.q[...]
    assert q.sharding.mesh == mesh and q.sharding.spec == logical_to_spec(
        ("embed", "heads", "head_dim"), mesh, DEFAULT_RULES
    )
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (16, 2, 8)
    # our bf16 files are valid safetensors for torch too
    from safetensors.torch import load_file

    t = load_file(str(tmp_path / index["weight_map"]["model.embed_tokens.weight"]))["model.embed_tokens.weight"]
    assert t.dtype == torch.bfloat16
    np.testing.assert_array_equal(t.float().numpy(), a[("embed",)].astype(np.float32))


def test_safetensors_codec_matches_library(tmp_path):
    from safetensors.numpy import load_file

    x = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2, 3], np.int64)}
    write_safetensors(tmp_path / "y.safetensors", x)
    y = load_file(str(tmp_path / "y.safetensors"))
    assert all(np.array_equal(x[k], y[k]) for k in x)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _rewrite_tensors(d, fn):
    from safetensors.numpy import load_file, save_file

    t = load_file(str(d / "model.safetensors"))
    fn(t)
    save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})


def _edit_config(d, fn):
    c = json.loads((d / "config.json").read_text())
    fn(c)
    (d / "config.json").write_text(json.dumps(c))


def _drop(name):
    return lambda d: _rewrite_tensors(d, lambda t: t.pop(name))


def _put(name, shape):
    return lambda d: _rewrite_tensors(d, lambda t: t.update({name: np.zeros(shape, np.float32)}))


def _cfg(**kw):
    return lambda d: _edit_config(d, lambda c: [c.pop(k) if v is None else c.update({k: v}) for k, v in kw.items()])


UP0, UP2 = "model.layers.0.mlp.up_proj.weight", "model.layers.2.mlp.up_proj.weight"
KB1 = "model.layers.1.self_attn.k_proj.bias"
BAD = {
    "missing tensor": (_drop(KB1), f"'{KB1}' is missing"),
    "wrong shape": (_put(UP0, (8, 32)), rf"'{UP0}' has shape \(8, 32\), config.json implies \(64, 32\)"),
    "extra tensor": (_put(UP2, (2,)), f"unexpected tensors.*{UP2}"),
    "missing field": (_cfg(num_hidden_layers=None), "'num_hidden_layers' is missing"),
    "bad field": (_cfg(hidden_size="big"), "'hidden_size'='big'"),
    "unknown model_type": (_cfg(model_type="llama"), "model_type='llama'"),
    "bad heads": (_cfg(num_key_value_heads=3), "num_kv_heads=3"),
    "no config": (lambda d: (d / "config.json").unlink(), "config.json not found"),
    "no weights": (lambda d: (d / "model.safetensors").unlink(), "neither model.safetensors"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_checkpoint_errors_name_the_problem(src, tmp_path, case):
    corrupt, msg = BAD[case]
    d = _copy(src["qwen2"], tmp_path / "ckpt")
    corrupt(d)
    with pytest.raises((ValueError, FileNotFoundError), match=msg):
        load_hf_checkpoint(d)


def test_convert_cli(src, tmp_path, capsys):
    from agro_jax.model.tokenizer import load_tokenizer, train_tokenizer

    d = _copy(src["qwen3"], tmp_path / "in")
    train_tokenizer(["select a from t"] * 4, 270, str(d), added_tokens=["<sql>"])
    from agro_jax import cli

    assert cli.main(["convert", "--in", str(d), "--out", str(tmp_path / "o"), "--dtype", "float32"]) == 0
    assert "verified" in capsys.readouterr().out
    assert load_tokenizer(str(tmp_path / "o")).encode("<sql>", add_special_tokens=False) == [
        load_tokenizer(str(d)).convert_tokens_to_ids("<sql>")
    ]
    a, _ = load_hf_checkpoint(src["qwen3"])
    b, _ = load_hf_checkpoint(tmp_path / "o")
    fa, fb = flat(a), flat(b)
    assert all(np.array_equal(fa[k], fb[k]) for k in fa)
