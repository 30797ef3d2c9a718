"""Shared test helpers (importable as `helpers`: pyproject's pytest pythonpath has tests/): the toy GRPO config,
tiny random HF models and their transformers logits."""

import os
import pathlib
import subprocess
import sys

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# XLA's LLVM backend at -O0 in the test processes: most tests' programs are small and many, so compiling is most of
# their time, and -O0 compiles them ~30% faster (CPU seconds). Runs whose time is execution (a whole tiny-model run,
# the real pipeline) start their own process at the default level: at -O0 the learning demo and the real pipeline
# each took ~90 s longer in the suite (benchmarks/RESULTS.md "test suite").
XLA_TEST_OPTIONS = "--xla_backend_optimization_level=0"


def xla_flags(devices: int = 1, fast_compile: bool = True) -> str:
    """XLA_FLAGS for a process a test starts: `devices` CPU devices (1: as the main job runs), and -O0 unless the
    process's time is execution (fast_compile=False: a whole tiny-model run, the real model's decode loops)."""
    flags = [f"--xla_force_host_platform_device_count={devices}"] if devices > 1 else []
    return " ".join(flags + ([XLA_TEST_OPTIONS] if fast_compile else []))


def cli_command(*args) -> list[str]:
    return [sys.executable, "-m", "agro_jax.cli", *map(str, args)]


def run_cli(*args, fast_compile: bool = True, devices: int = 1, timeout: float | None = None, **env):
    """`agro-sql ARGS` in its own process from the repo root, as a user runs it: `devices` CPU devices (not the tests'
    8-device mesh), XLA at -O0 unless fast_compile=False, `env` on top of this process's variables (the session's
    compilation cache included). Fails the test with the output's tail; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), XLA_FLAGS=xla_flags(devices, fast_compile), **env)
    proc = subprocess.run(cli_command(*args), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    tail = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, f"agro-sql {args[0]} exited {proc.returncode}:\n{tail}"
    return proc


TOY = [
    "--config",
    "configs/tiny_cpu.py",
    "--config.grpo.env=toy",
    "--config.model.vocab_size=64",
    "--config.model.hidden_size=32",
    "--config.model.intermediate_size=64",
    "--config.grpo.prompts_per_step=4",
    "--config.grpo.group_size=4",
    "--config.grpo.optim.learning_rate=0.003",
    "--config.checkpoint.export_hf=false",
]


def apply_config_overrides(config, items):
    from agro_jax.config import apply_overrides

    return apply_overrides(config, [x for x in items if x.startswith("--config.")])


def toy_config(*extra):
    from agro_jax.config import load_config

    return apply_config_overrides(load_config("configs/tiny_cpu.py"), TOY[2:] + list(extra))


# ------------------------------------------------------------------------------------------ tiny HF models (torch)


def make_hf(family: str, tied: bool, out_dir, seed: int = 0, head_dim: int = 16):
    """A random tiny HF model (GQA 4/2 heads, head_dim != hidden/heads for qwen3), all weights randomized."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    kw = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, rope_theta=1000.0, rms_norm_eps=1e-5, tie_word_embeddings=tied,
              max_position_embeddings=128, attn_implementation="eager")  # fmt: skip
    torch.manual_seed(seed)
    if family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**kw))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=head_dim, **kw))
    with torch.no_grad():  # biases/norms are 0/1 at init: randomize everything so the mapping is really tested
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.2 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    model.eval().save_pretrained(out_dir)
    return model


def batch(vocab, b=3, t=10, seed=1):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (b, t)).astype(np.int32)
    valid = np.ones((b, t), bool)
    valid[1, :3] = False
    valid[2, :6] = False
    return tokens, valid


def hf_logits(model, tokens, valid):
    import torch

    from agro_jax.model.qwen import positions_from_valid

    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(valid, dtype=torch.long),
            position_ids=torch.tensor(np.asarray(positions_from_valid(valid)), dtype=torch.long),
        )
    return out.logits.float().numpy()


# -------------------------------------------------------------------------------------------------------- the CLI


def cli_error(capsys, argv) -> str:
    """Runs `agro-sql argv` expecting a user error: exit code 2 and, as the last stderr line, `agro-sql X: error: ...`.
    Returns that line."""
    import pytest

    from agro_jax import cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2, err
    assert err and err[-1].startswith(f"agro-sql {argv[0]}: error: "), err
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def tiny_chat_tokenizer():
    """A 400-token byte-level BPE with the chat specials, the agent tags and a ChatML template (no files)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from agro_jax.rollout.agent import AGENT_TAGS

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *AGENT_TAGS]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["select count(*) from singer where name = 'x'"] * 10, trainer)
    t = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    t.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return t
