"""Embedded byte-level BPE: train/save/load round-trip, chat template, single-id added tokens, HF compatibility."""

import json
import unicodedata

import pytest
from transformers import AutoTokenizer

from agro_jax.model.tokenizer import IM_END, IM_START, PAD, load_tokenizer, train_tokenizer

TAGS = ["<think>", "</think>", "<sql>", "</sql>", "<observation>", "</observation>", "<answer>", "</answer>"]
TEXTS = [
    "SELECT name, COUNT(*) FROM singer WHERE age > 30 GROUP BY name;",
    "How many singers are older than 30?",
    "héllo wörld 12345\n\n  indented\tline",
    "Ünïcödé NFC: e\u0301",
] * 20
SAMPLES = ["<sql>SELECT a FROM t</sql>", "  two  spaces\n\nnew lines\r\n", "数字 123 ⟨x⟩ e\u0301 é"]
SAMPLES += ["<answer>x</answer>."]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    tok = train_tokenizer(TEXTS, 320, str(d), added_tokens=TAGS)
    return d, tok


def test_train_save_load_roundtrip(tok_dir):
    d, tok = tok_dir
    assert tok.eos_token == IM_END and tok.pad_token == PAD and tok.pad_token_id != tok.eos_token_id
    assert len(tok) <= 320 + len(TAGS)
    again, auto = load_tokenizer(str(d)), AutoTokenizer.from_pretrained(str(d))
    for s in SAMPLES:
        ids = tok.encode(s, add_special_tokens=False)
        assert again.encode(s, add_special_tokens=False) == ids == auto.encode(s, add_special_tokens=False)
        # NFC normalization is the only change to the text
        assert tok.decode(ids) == unicodedata.normalize("NFC", s)


def test_added_and_special_tokens_are_single_ids(tok_dir):
    _, tok = tok_dir
    for t in TAGS + [PAD, IM_START, IM_END]:
        ids = tok.encode(f"x{t}y", add_special_tokens=False)
        assert len(tok.encode(t, add_special_tokens=False)) == 1, t
        assert tok.decode(ids) == f"x{t}y"
    ids = tok.encode("<sql>q</sql><|im_end|>", add_special_tokens=False)
    # agent tags are content (kept when special tokens are skipped); chat markers are special (dropped)
    assert tok.decode(ids, skip_special_tokens=True) == "<sql>q</sql>"


def test_chat_template(tok_dir):
    _, tok = tok_dir
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U?"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU?<|im_end|>\n<|im_start|>assistant\n"
    full = msgs + [{"role": "assistant", "content": "<answer>A</answer>"}]
    text2 = tok.apply_chat_template(full, tokenize=False)
    assert text2.startswith(text) and text2.endswith("<answer>A</answer><|im_end|>\n")
    ids = tok.encode(text, add_special_tokens=False)
    assert ids.count(tok.convert_tokens_to_ids(IM_START)) == 3 and ids[-1] == tok.encode("\n")[0]
    with pytest.raises(Exception, match="unsupported role"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_qwen2_config_dir_tokenizes_identically(tok_dir, tmp_path):
    """A model dir whose config.json says qwen2 makes AutoTokenizer rebuild Qwen's pipeline in code: same ids."""
    d, tok = tok_dir
    for f in d.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": len(tok)}))
    auto = AutoTokenizer.from_pretrained(str(tmp_path))
    for s in SAMPLES + TAGS:
        assert auto.encode(s, add_special_tokens=False) == tok.encode(s, add_special_tokens=False), s


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(TEXTS, 100, str(tmp_path))
    with pytest.raises(ValueError, match="clash"):
        train_tokenizer(TEXTS, 300, str(tmp_path), added_tokens=[IM_END])
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_tokenizer(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="no usable tokenizer"):
        load_tokenizer(str(tmp_path))
