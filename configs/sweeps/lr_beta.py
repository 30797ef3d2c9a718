"""GRPO learning rate x KL weight (beta): 3 x 2 = 6 variants.

    agro-sql sweep --config configs/tiny_cpu.py --sweep configs/sweeps/lr_beta.py --stage grpo [--dry-run]

`:quick` keeps 2 x 1 variants and 5 GRPO steps for a smoke test of the sweep machinery itself.
"""

from agro_jax.sweep import product, sweep


def get_sweep(arg=None):
    if arg == "quick":
        return product(sweep("grpo.optim.learning_rate", [1e-4, 3e-4]), sweep("grpo.steps", [5]))
    return product(sweep("grpo.optim.learning_rate", [1e-4, 2e-4, 5e-4]), sweep("grpo.beta", [0.0, 0.01]))
