"""GRPO group size at a fixed rollout budget (prompts_per_step x group_size = 32): zipped, 3 variants.

agro-sql sweep --config configs/tiny_cpu.py --sweep configs/sweeps/group_size.py --stage grpo
"""

from agro_jax.sweep import sweep, zipit


def get_sweep(arg=None):
    return zipit(sweep("grpo.group_size", [2, 4, 8]), sweep("grpo.prompts_per_step", [16, 8, 4]))
