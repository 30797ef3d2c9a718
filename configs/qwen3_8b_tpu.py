"""The paper's scale: Qwen3-8B(-Base), group 10, 256 prompts per step, lr 5e-6, temperature 0.7.

Run on a TPU VM (see launch_tpu.sh): agro-sql run --config configs/qwen3_8b_tpu.py:/path/to/Qwen3-8B-Base
Sized for v5p-8 (4 chips, one host), the smallest v5p slice on which every program fits: `agro-sql plan --config
configs/qwen3_8b_tpu.py --topology v5p-8` (benchmarks/RESULTS.md "TPU plan"). On a larger slice, lower the
grad_accum_steps (more rows per micro-batch) and raise rollout.max_cache_tokens: the plan says what fits.
"""

from configs import tiny_cpu
from configs.common import mesh_config, optim_config, paper_factory


def get_config(arg=None):
    c = tiny_cpu.get_config()
    c.workdir = "runs/qwen3_8b"
    c.mesh = mesh_config((1, -1, 4))  # fsdp over hosts/chips, 4-way tensor parallel inside a host (v5p-8: tensor only)
    c.model.hf_path = arg or "/mnt/models/Qwen3-8B-Base"
    # Qwen3-8B-Base's architecture (its config.json): the checkpoint's own config.json wins when hf_path exists; these
    # fields let `agro-sql plan` compile the paper-scale programs on a machine without the weights.
    c.model.update(
        family="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_layers=36, num_heads=32,
        num_kv_heads=8, head_dim=128, rope_theta=1e6, tie_word_embeddings=False, max_position_embeddings=32768,
    )  # fmt: skip
    c.model.scan_layers = True  # 36 blocks compiled once, not 36 times (compile CPU 163 s vs 266 s, see qwen.py)
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = "full"  # 8k-token sequences: keep only block inputs for the backward pass
    c.model.logits_chunk = 512  # 64 x 8192-token micro-batches: never B x T x 151,936 logits (~5 GB per row)
    paper_factory(c)  # before the overrides below
    c.tokenizer.path = c.model.hf_path
    c.executor.num_workers = 16
    c.factory.candidates_per_round = 20000
    c.factory.num_examples = 10000
    c.factory.max_per_query = 4  # the six embedded DBs alone give ~4k examples; add extra_databases for more
    c.factory.schema_compact = False  # DDL schema text: 4096-token prompts have room
    c.rollout.max_turns = 5
    c.rollout.max_prompt_len = 4096
    c.rollout.max_new_tokens_per_turn = 1024
    c.rollout.max_total_len = 8192
    c.rollout.temperature = 0.7
    # one rollout chunk: 128 rows (12 groups) x 8192 slots, its KV cache 36 GiB per v5p-8 chip (kv heads over tensor)
    c.rollout.max_cache_tokens = 128 * 8192
    c.rollout.max_prefill_tokens = 32768  # 8 prompts of 4096 tokens per prefill call
    c.sft.num_selected = 4096
    c.sft.batch_size = 64
    c.sft.epochs = 2
    c.sft.optim = optim_config(1e-5, 128, 10)
    c.sft.optim.grad_accum_steps = 32  # 2 sequences of 8192 tokens per micro-batch (v5p-8: 76.3 of 95.74 GiB per chip)
    c.grpo.steps = 300
    c.grpo.prompts_per_step = 256
    c.grpo.group_size = 10
    c.grpo.beta = 0.001
    c.grpo.optim = optim_config(5e-6, 300, 10)
    c.grpo.optim.grad_accum_steps = 1280  # 2560 sequences per step -> 2 per micro-batch (v5p-8: 84.7 of 95.74 GiB)
    c.grpo.recompute_old_logp = True  # sampling at T=0.7: take old logprobs from the untempered policy
    c.checkpoint.every_steps = 20
    c.eval.batch_size = 64
    return c
