"""Tokenizers: load any local HF tokenizer dir, or train the embedded byte-level BPE with Qwen's exact pipeline.

The trained tokenizer uses Qwen2's NFC normalizer + split regex + ByteLevel, so a dir that transformers maps to
Qwen2Tokenizer (config.json says qwen2, which rebuilds that pipeline in code) tokenizes identically to the saved
tokenizer.json. Special tokens: <|endoftext|> (pad), <|im_start|>, <|im_end|> (eos). Added tokens (agent tags) are
non-special added tokens: one id each, never split by BPE, and kept by decode(skip_special_tokens=True).
"""

from __future__ import annotations

import pathlib

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END)

# Qwen2's pre-tokenizer split regex (transformers models/qwen2/tokenization_qwen2.py PRETOKENIZE_REGEX).
QWEN_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen-style ChatML: system/user/assistant turns; add_generation_prompt opens the assistant turn.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('chat template: unsupported role ' + message['role']) -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def _wrap(tok_obj, added_tokens):
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=tok_obj, eos_token=IM_END, pad_token=PAD, unk_token=None, chat_template=CHAT_TEMPLATE
    )
    tok.add_special_tokens({"additional_special_tokens": []})
    if added_tokens:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in added_tokens])
    return tok


def train_tokenizer(texts, vocab_size: int, out_dir: str, added_tokens=()):
    """Trains byte-level BPE (Qwen pre-tokenization) on `texts`, saves it to out_dir, returns the reloaded tokenizer.

    vocab_size counts the 256 byte symbols and the 3 special tokens; added_tokens come on top."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    texts = list(texts)
    if not texts:
        raise ValueError("train_tokenizer: texts is empty")
    if int(vocab_size) < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"train_tokenizer: vocab_size={vocab_size} < 259 (256 bytes + 3 special tokens)")
    dup = sorted({t for t in added_tokens if t in SPECIAL_TOKENS or not t})
    if dup:
        raise ValueError(f"train_tokenizer: added_tokens {dup} are empty or clash with the special tokens")
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=int(vocab_size),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=len(texts))
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _wrap(tok, tuple(added_tokens)).save_pretrained(str(out))
    return load_tokenizer(str(out))


def load_tokenizer(path: str):
    """Any local HF tokenizer dir (or a GGUF file: its converted dir, see real_model.resolve_model_path). With a
    tokenizer.json its pipeline is used as saved (PreTrainedTokenizerFast), otherwise AutoTokenizer decides
    (vocab.json + merges.txt, sentencepiece, ...). pad falls back to eos."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from agro_jax.model.real_model import resolve_model_path

    p = resolve_model_path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"load_tokenizer: {path!r} is not a directory")
    if (p / "tokenizer.json").is_file():
        tok = PreTrainedTokenizerFast.from_pretrained(str(p))
    else:
        try:
            tok = AutoTokenizer.from_pretrained(str(p))
        except Exception as e:
            raise ValueError(f"load_tokenizer: no usable tokenizer files in {path!r} ({e})") from e
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok
