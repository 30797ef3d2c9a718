"""LoRA adapters on Qwen's attention and MLP projections: y = x W + (alpha / rank) * (x A) B.

`add_adapters(model, LoRAConfig, mesh, rules)` attaches a `LoRA` module as `<name>_lora` beside each target weight
(attn q/k/v/o, mlp gate/up/down); qwen.py's projections add its output when present. A covers the base weight's input
dims and B its output dims, with the base weight's logical axes on those dims (the rank dim replicated), so adapters
shard like their base weights. B starts at zero: a fresh adapter leaves the model's outputs bit-identical.

Adapter weights are `LoRAParam`, a Variable type apart from nnx.Param: `nnx.state(model, nnx.Param)` (HF export and
import, init_from checkpoints) sees only the base weights, and `split(model)` makes the adapters the trained state and
the base weights a frozen state passed to the jitted steps as an argument (a closed-over array would be baked into
the executable as a constant). Dropout is not implemented (config must say 0).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ATTN_TARGETS = ("q", "k", "v", "o")
MLP_TARGETS = ("gate", "up", "down")
TARGETS = ATTN_TARGETS + MLP_TARGETS
IN_DIMS = {"o": 2}  # o: [heads, head_dim, embed] contracts two input dims; every other target one


class LoRAParam(nnx.Variable):
    """A LoRA adapter weight (trained when adapters exist; base nnx.Params are then frozen)."""


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    rank: int = 0  # 0: no adapters (full fine-tuning)
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = TARGETS

    def __post_init__(self):
        if int(self.rank) < 0:
            raise ValueError(f"config.model.lora.rank={self.rank!r} must be >= 0 (0 disables LoRA)")
        if float(self.dropout) != 0.0:
            raise ValueError(f"config.model.lora.dropout={self.dropout!r}: only 0 is supported")
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets:
            raise ValueError(f"config.model.lora.targets={tuple(self.targets)!r}: each must be one of {TARGETS}")

    @property
    def scale(self) -> float:
        return float(self.alpha) / int(self.rank)

    @classmethod
    def from_config(cls, lora_cfg) -> LoRAConfig:
        """From config.model.lora (ConfigDict or dict); None -> disabled."""
        if lora_cfg is None:
            return cls()
        d = dict(lora_cfg)
        return cls(int(d["rank"]), float(d["alpha"]), float(d["dropout"]), tuple(d["targets"]))


class LoRA(nnx.Module):
    """`lora(x_BxTx<in>) -> scale * (x A) B`, x with the base weight's input dims last."""

    def __init__(self, base_shape, base_axes, n_in: int, rank: int, scale: float, param_dtype, rng):
        in_shape, out_shape = tuple(base_shape[:n_in]), tuple(base_shape[n_in:])
        in_axes, out_axes = tuple(base_axes[:n_in]), tuple(base_axes[n_in:])
        bound = 1.0 / math.sqrt(math.prod(in_shape))  # PEFT's kaiming_uniform(a=sqrt(5)) bound for A
        a = rng.uniform(-bound, bound, size=(*in_shape, rank)).astype(param_dtype)
        self.a = LoRAParam(jnp.asarray(a), logical_axes=(*in_axes, None))
        self.b = LoRAParam(jnp.zeros((rank, *out_shape), param_dtype), logical_axes=(None, *out_axes))
        self.scale = float(scale)
        self.n_in = n_in

    def __call__(self, x):
        dt = x.dtype
        ins, outs = "ijkl"[: self.n_in], "mnop"[: self.b.ndim - 1]
        xa = jnp.einsum(f"...{ins},{ins}r->...r", x, self.a[...].astype(dt))
        return jnp.einsum(f"...r,r{outs}->...{outs}", xa, (self.b[...] * self.scale).astype(dt))

    def delta(self) -> jax.Array:
        """scale * A B in the base weight's layout [in..., out...] (for merging into the base)."""
        a, b = self.a[...].astype(jnp.float32), self.b[...].astype(jnp.float32)
        return jnp.tensordot(a, b, axes=1) * self.scale


def _targets(model, targets):
    """(module, weight name) for each target projection of each layer."""
    for block in model.layers:
        for name in targets:
            yield (block.attn if name in ATTN_TARGETS else block.mlp), name


def add_adapters(model, cfg: LoRAConfig, mesh=None, rules=None, seed: int = 0):
    """Attaches fresh adapters (in place) and returns the model; rank 0 is a no-op. A is drawn from a numpy RNG seeded
    by `seed` (identical on every host); with a mesh each adapter is placed in its logical-axis sharding."""
    if not cfg.rank:
        return model
    if has_adapters(model):
        raise ValueError("add_adapters: the model already has LoRA adapters")
    rng = np.random.default_rng(seed)
    for module, name in _targets(model, cfg.targets):
        base = getattr(module, name)
        axes = base.get_metadata().get("logical_axes") or (None,) * base.ndim
        lora = LoRA(base.shape, axes, IN_DIMS.get(name, 1), int(cfg.rank), cfg.scale, base.dtype, rng)
        if mesh is not None:
            from agro_jax.scale.sharding import logical_sharding

            for var in (lora.a, lora.b):
                sharding = logical_sharding(var.get_metadata()["logical_axes"], mesh, rules, var.shape)
                host = np.asarray(var.get_value())
                var.set_value(jax.make_array_from_callback(host.shape, sharding, lambda idx, h=host: h[idx]))
        setattr(module, f"{name}_lora", lora)
    return model


def has_adapters(model) -> bool:
    return bool(jax.tree.leaves(nnx.state(model, LoRAParam)))


def deltas(model) -> dict[tuple, LoRA]:
    """Base param path (as in nnx.to_flat_state) -> its LoRA module, for every adapted weight."""
    out = {}
    for i, block in enumerate(model.layers):
        for part, names in (("attn", ATTN_TARGETS), ("mlp", MLP_TARGETS)):
            for name in names:
                lora = getattr(getattr(block, part), f"{name}_lora", None)
                if lora is not None:
                    out[("layers", i, part, name)] = lora
    return out


def split(model):
    """(graphdef, trained, frozen, rest): with adapters, trained = the LoRAParams and frozen = the base Params; without,
    trained = the Params and frozen is an empty State. rest is the remaining (non-Param) state."""
    if has_adapters(model):
        return nnx.split(model, LoRAParam, nnx.Param, ...)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, params, nnx.State({}), rest


def adapters_off(trained):
    """A new adapter state with every B zeroed: merged with the frozen base it is the base model exactly (x A 0 = 0),
    a reference policy that costs adapter-sized memory, not a second copy of the weights."""

    def one(path, x):
        keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        return jnp.zeros_like(x) if keys and keys[-1] == "b" else jnp.copy(x)  # a copy: the steps donate `trained`

    return jax.tree_util.tree_map_with_path(one, trained)


def policy_state(trained, frozen):
    """The policy's weights as one State (what the samplers merge with rest): trained + frozen, arrays shared."""
    return nnx.merge_state(trained, frozen) if jax.tree.leaves(frozen) else trained


def merge_adapters(model):
    """W += alpha/rank * A B for every adapter, in place and in W's sharding; then B = 0. The model computes the same
    function with the deltas now in its base weights (e.g. a new stage starting from a LoRA stage's checkpoint: its
    adapters-off reference is then that stage's policy)."""
    for (_, i, part, name), lora in deltas(model).items():
        base = getattr(getattr(model.layers[i], part), name)
        w = base.get_value()
        base.set_value(jax.device_put((w.astype(jnp.float32) + lora.delta()).astype(w.dtype), w.sharding))
        lora.b.set_value(jnp.zeros_like(lora.b.get_value()))
    return model
