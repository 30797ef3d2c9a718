"""Shared building blocks for configs: each component reads only its own sub-dict."""

from ml_collections import ConfigDict

# Logical axis -> mesh axes. Params are annotated with logical names in agro_jax/model; activations with 'batch'.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
)


def mesh_config(shape=(-1, 1, 1)) -> ConfigDict:
    """A (data, fsdp, tensor) mesh; one -1 entry takes all remaining devices."""
    return ConfigDict({"shape": tuple(shape), "axis_names": ("data", "fsdp", "tensor"), "rules": DEFAULT_RULES})


def optim_config(lr: float, steps: int, warmup_steps: int = 0) -> ConfigDict:
    return ConfigDict(
        {
            "learning_rate": lr,
            "warmup_steps": warmup_steps,
            "total_steps": steps,
            "schedule": "cosine",  # cosine | constant
            "end_lr_factor": 0.1,
            "weight_decay": 0.0,
            "b1": 0.9,
            "b2": 0.999,
            "grad_clip_norm": 1.0,
            "grad_accum_steps": 1,
        }
    )
