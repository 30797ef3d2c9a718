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


def lora_config(rank: int = 0) -> ConfigDict:
    """config.model.lora: adapters on the attention/MLP projections (agro_jax/model/lora.py); rank 0 = full FT."""
    return ConfigDict(
        {
            "rank": rank,
            "alpha": 16.0,  # scale = alpha / rank
            "dropout": 0.0,  # only 0 is supported
            "targets": ("q", "k", "v", "o", "gate", "up", "down"),
        }
    )


def factory_model_keys() -> dict:
    """config.factory keys of the model in the factory loop (data_factory/model_loop.py); the rules stay the default."""
    return {
        "checker": "rules",  # rules | model: who writes SQL from the question alone (generation-as-check)
        "judge": "auto",  # auto | rules | model | none (auto: rules for model-written questions, none for the realizer)
        "model_path": "",  # HF dir or GGUF file; "" = the real Qwen2.5-Coder-0.5B-Instruct (agro-sql get-model)
        "model_batch_size": 8,  # prompts per sampler call
        "model_temperature": 0.7,  # question writer (the checker and judge decode greedily)
        "question_max_new_tokens": 64,
        "sql_max_new_tokens": 128,
        "verify_batch": 100,  # candidates per verification batch (one progress step, one saved state)
    }


def paper_factory(c) -> None:
    """The paper-shaped factory and evaluation for real models: the full difficulty mix, one example per literal-masked
    query, whole unseen skeletons held out, no GRPO probe (the tiny default instead trains a learnable miniature)."""
    c.factory.target_mix = ConfigDict({"simple": 0.3, "moderate": 0.35, "complex": 0.25, "highly_complex": 0.1})
    c.factory.update(rounds=2, candidates_per_round=600, num_examples=400, heldout_fraction=0.15)
    c.factory.update(heldout_by="skeleton", skeleton_heldout_fraction=0.0, max_per_query=1)
    c.eval.extra_splits = ()
    c.grpo.probe_every = 0
