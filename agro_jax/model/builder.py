"""build_model: the policy from config.model, params sharded by logical-axis rules (HF checkpoint or random init),
with LoRA adapters attached when config.model.lora.rank > 0."""

from __future__ import annotations

import jax
from flax import nnx

from agro_jax.model.lora import LoRAConfig, add_adapters
from agro_jax.model.qwen import Qwen, QwenConfig
from agro_jax.scale.sharding import state_shardings


def init_sharded(cfg: QwenConfig, mesh, rules, seed: int = 0) -> Qwen:
    """Random init where each param is created directly in its sharding (jit with out_shardings): the full model is
    never materialized on one device."""
    abstract = nnx.eval_shape(lambda: Qwen(cfg, rngs=nnx.Rngs(seed)))
    graphdef, abs_state = nnx.split(abstract)
    shardings = state_shardings(abs_state, mesh, rules)

    def init():
        return nnx.state(Qwen(cfg, rngs=nnx.Rngs(seed)))

    return nnx.merge(graphdef, jax.jit(init, out_shardings=shardings)())


def build_model(model_cfg, mesh, rules, *, vocab_size: int | None = None, seed: int = 0) -> tuple[Qwen, QwenConfig]:
    """(model, cfg). model_cfg.hf_path set: load that local HF checkpoint (architecture fields ignored; dtype,
    param_dtype, remat and logits_chunk from model_cfg still apply, e.g. bfloat16 compute over float32 master
    params). model_cfg.lora (rank > 0): fresh adapters (B = 0) on the target projections, sharded like them."""
    get = model_cfg.get if hasattr(model_cfg, "get") else (lambda k, d=None: d)
    hf_path = get("hf_path", "")
    if hf_path:
        from agro_jax.model.hf_io import load_hf_checkpoint

        model, cfg = load_hf_checkpoint(
            hf_path,
            mesh=mesh,
            rules=rules,
            dtype=get("dtype") or None,
            param_dtype=get("param_dtype") or None,
            remat=get("remat", "none"),
            logits_chunk=int(get("logits_chunk", 0) or 0),
            scan_layers=bool(get("scan_layers", False)),
        )
    else:
        cfg = QwenConfig.from_config(model_cfg, vocab_size)
        model = init_sharded(cfg, mesh, rules, seed)
    add_adapters(model, LoRAConfig.from_config(get("lora")), mesh, rules, seed)
    return model, cfg
