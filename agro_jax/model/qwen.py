"""Qwen2/Qwen2.5/Qwen3 decoder in Flax NNX: GQA + RoPE (HF rotate_half) + RMSNorm + SwiGLU, optional KV cache.

Weights keep heads as their own axis (q: [embed, heads, head_dim]) so tensor parallelism shards whole heads. Every
Param carries `logical_axes` metadata (names from configs/common.py DEFAULT_RULES); agro_jax/scale/sharding.py maps them
to the (data, fsdp, tensor) mesh. Attention softmax and final logits are float32 whatever the compute dtype.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from agro_jax.model.kv_cache import KVCache

FAMILIES = ("qwen2", "qwen3")
# QwenConfig.remat -> what a block's backward pass keeps (None: no remat). save_dots: outputs of matmuls against
# weights (no batch dims in the dot); attention's batched score/value einsums and all elementwise ops are recomputed.
REMAT_POLICIES = {"none": None, "full": jax.checkpoint_policies.nothing_saveable,
                  "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class QwenConfig:
    family: str = "qwen3"
    vocab_size: int = 1024
    hidden_size: int = 64
    intermediate_size: int = 192
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 2048
    attention_bias: bool = False  # qwen2: True (q/k/v bias)
    qk_norm: bool = True  # qwen3: RMSNorm over head_dim of q and k
    dtype: str = "float32"  # compute; "auto": bfloat16 on accelerators, float32 on CPU (resolved at construction)
    param_dtype: str = "float32"  # master weights ("auto": float32); logits and log-softmax are float32 regardless
    # Backward-pass memory policy per block: "none" keeps every activation; "full" recomputes the block from its
    # input; "save_dots" keeps the projection (matmul) outputs and recomputes the rest. True/False mean full/none.
    remat: str = "none"
    # Sequence positions per chunk when log-probs are taken from hidden states (model/logprobs.py): the backward pass
    # then holds B x chunk x V logits instead of B x T x V. 0: all positions at once.
    logits_chunk: int = 0
    # True: the blocks run as one lax.scan over their stacked states, compiled once instead of once per layer (same
    # maths; logits equal to float rounding). Measured for a Qwen3-8B GRPO update AOT-compiled for v5p-64 on 2 cores:
    # 163 s vs 266 s of compile CPU time, 3.8 vs 7.5 GB compile RSS. Params keep their per-layer layout.
    scan_layers: bool = False

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"QwenConfig.family={self.family!r} must be one of {FAMILIES}")
        for f in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            if int(getattr(self, f)) <= 0:
                raise ValueError(f"QwenConfig.{f}={getattr(self, f)!r} must be a positive int")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"QwenConfig.num_heads={self.num_heads} not divisible by num_kv_heads={self.num_kv_heads}")
        if self.head_dim <= 0 or self.head_dim % 2:
            raise ValueError(f"QwenConfig.head_dim={self.head_dim!r} must be a positive even int (RoPE)")
        if self.dtype == "auto":
            object.__setattr__(self, "dtype", "float32" if jax.default_backend() == "cpu" else "bfloat16")
        if self.param_dtype == "auto":
            object.__setattr__(self, "param_dtype", "float32")
        for f in ("dtype", "param_dtype"):
            jnp.dtype(getattr(self, f))  # raises on an unknown dtype name
        if isinstance(self.remat, bool):
            object.__setattr__(self, "remat", "full" if self.remat else "none")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"QwenConfig.remat={self.remat!r} must be one of {tuple(REMAT_POLICIES)} (or a bool)")
        if int(self.logits_chunk) < 0:
            raise ValueError(f"QwenConfig.logits_chunk={self.logits_chunk!r} must be >= 0 (0: no chunking)")

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @classmethod
    def from_config(cls, model_cfg, vocab_size: int | None = None) -> QwenConfig:
        """From config.model (ConfigDict). vocab_size overrides model_cfg.vocab_size when that is 0."""
        family = str(model_cfg.family)
        vocab = int(model_cfg.get("vocab_size", 0) or 0) or int(vocab_size or 0)
        if vocab <= 0:
            raise ValueError("config.model.vocab_size is 0 and no vocab_size was given (take it from the tokenizer)")
        kw = {f.name: model_cfg[f.name] for f in dataclasses.fields(cls) if f.name in model_cfg}
        kw.update(family=family, vocab_size=vocab)
        kw.setdefault("attention_bias", family == "qwen2")
        kw.setdefault("qk_norm", family == "qwen3")
        return cls(**kw)

    @classmethod
    def from_hf(cls, hf: dict) -> QwenConfig:
        """From a Hugging Face config.json dict (model_type qwen2 | qwen3). Errors name the bad field."""
        family = hf.get("model_type")
        if family not in FAMILIES:
            raise ValueError(f"config.json: model_type={family!r} is not supported (expected one of {FAMILIES})")

        def req(name, typ=int):
            if name not in hf or hf[name] is None:
                raise ValueError(f"config.json: required field {name!r} is missing")
            try:
                return typ(hf[name])
            except (TypeError, ValueError) as e:
                raise ValueError(f"config.json: field {name!r}={hf[name]!r} is not a valid {typ.__name__}") from e

        heads = req("num_attention_heads")
        hidden = req("hidden_size")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"config.json: rope_type={rope_type!r} is not supported (only 'default')")
        theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        if hf.get("use_sliding_window", False):
            raise ValueError("config.json: use_sliding_window=true is not supported")
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config.json: hidden_act={hf['hidden_act']!r} is not supported (only 'silu')")
        dtype = str(hf.get("dtype") or hf.get("torch_dtype") or "float32")
        kv_heads = hf.get("num_key_value_heads", 32)  # missing/None defaults as in transformers' Qwen configs
        return cls(
            family=family,
            vocab_size=req("vocab_size"),
            hidden_size=hidden,
            intermediate_size=req("intermediate_size"),
            num_layers=req("num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=int(kv_heads if kv_heads is not None else heads),
            head_dim=int(hf.get("head_dim") or (128 if family == "qwen3" else hidden // heads)),
            rope_theta=float(theta),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
            attention_bias=True if family == "qwen2" else bool(hf.get("attention_bias", False)),
            qk_norm=family == "qwen3",
            dtype=dtype,
            param_dtype=dtype,
        )

    def to_hf(self) -> dict:
        """A config.json dict that transformers' Qwen2/Qwen3ForCausalLM load."""
        arch = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[self.family]
        d = {
            "architectures": [arch],
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "use_sliding_window": False,
            "attention_dropout": 0.0,
            "dtype": str(jnp.dtype(self.param_dtype)),
        }
        if self.family == "qwen3":
            d["attention_bias"] = self.attention_bias
        return d


# ---------------------------------------------------------------------------------------------------- helpers


def make_causal_mask(valid_BxT) -> jax.Array:
    """mask_BxTxT: query t may attend key s iff s <= t and key s is a real (non-pad) token."""
    t = valid_BxT.shape[1]
    causal_TxT = jnp.tril(jnp.ones((t, t), bool))
    return causal_TxT[None] & jnp.asarray(valid_BxT, bool)[:, None, :]


def positions_from_valid(valid_BxT) -> jax.Array:
    """RoPE positions: index among the row's valid tokens (left padding gets 0)."""
    return jnp.maximum(jnp.cumsum(jnp.asarray(valid_BxT, jnp.int32), axis=-1) - 1, 0).astype(jnp.int32)


def token_logprobs(logits_BxTxV, targets_BxT) -> jax.Array:
    """logp_BxT[b, t] = log_softmax(logits[b, t])[targets[b, t]] in float32."""
    logits_BxTxV = logits_BxTxV.astype(jnp.float32)
    logz_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
    picked_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked_BxT - logz_BxT


def shard_activation(x_Bx___):
    """Pins the batch dim of an activation to ('data', 'fsdp') when traced under `jax.set_mesh` (so FSDP all-gathers
    weights rather than resharding activations); a no-op without a mesh or when the batch does not divide."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x_Bx___
    axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names and mesh.shape[a] > 1)
    n = math.prod(mesh.shape[a] for a in axes)
    if not axes or x_Bx___.shape[0] % n:
        return x_Bx___
    spec = jax.sharding.PartitionSpec(axes, *([None] * (x_Bx___.ndim - 1)))
    return jax.lax.with_sharding_constraint(x_Bx___, spec)


def _with_lora(module, name: str, x, y):
    """y = x against weight `name`, plus the output of the LoRA adapter model/lora.py attached as `<name>_lora`."""
    lora = getattr(module, f"{name}_lora", None)
    return y if lora is None else y + lora(x)


def _param(rngs, init, shape, dtype, axes):
    return nnx.Param(init(rngs.params(), shape, dtype), logical_axes=axes)


def _rms_norm(x, scale, eps):
    """HF Qwen RMSNorm: normalize in float32, cast back, then scale."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return scale * x32.astype(x.dtype)


def _rope(x_BxTxNxH, positions_BxT, theta):
    """HF rotate_half convention: the two halves of head_dim are the (real, imag) pairs."""
    h = x_BxTxNxH.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
    freqs_BxTxH2 = positions_BxT.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs_BxTxH2, freqs_BxTxH2], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb).astype(x_BxTxNxH.dtype), jnp.sin(emb).astype(x_BxTxNxH.dtype)
    x1, x2 = jnp.split(x_BxTxNxH, 2, axis=-1)
    return x_BxTxNxH * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


# ---------------------------------------------------------------------------------------------------- modules


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, param_dtype):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=("norm",))
        self.eps = eps

    def __call__(self, x):
        return _rms_norm(x, self.scale[...].astype(x.dtype), self.eps)


class Attention(nnx.Module):
    def __init__(self, cfg: QwenConfig, rngs: nnx.Rngs):
        d, n, k, h, pd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, jnp.dtype(cfg.param_dtype)
        init = nnx.initializers.normal(0.02)
        self.cfg = cfg
        self.q = _param(rngs, init, (d, n, h), pd, ("embed", "heads", "head_dim"))
        self.k = _param(rngs, init, (d, k, h), pd, ("embed", "kv_heads", "head_dim"))
        self.v = _param(rngs, init, (d, k, h), pd, ("embed", "kv_heads", "head_dim"))
        self.o = _param(rngs, init, (n, h, d), pd, ("heads", "head_dim", "embed"))
        if cfg.attention_bias:
            zeros = nnx.initializers.zeros
            self.q_bias = _param(rngs, zeros, (n, h), pd, ("heads", "head_dim"))
            self.k_bias = _param(rngs, zeros, (k, h), pd, ("kv_heads", "head_dim"))
            self.v_bias = _param(rngs, zeros, (k, h), pd, ("kv_heads", "head_dim"))
        if cfg.qk_norm:
            self.q_norm = RMSNorm(h, cfg.rms_norm_eps, pd)
            self.k_norm = RMSNorm(h, cfg.rms_norm_eps, pd)

    def __call__(self, x_BxTxD, positions_BxT, mask_BxTxS, layer: int, cache: KVCache | None, cache_index):
        cfg, dt = self.cfg, x_BxTxD.dtype
        q = _with_lora(self, "q", x_BxTxD, jnp.einsum("btd,dnh->btnh", x_BxTxD, self.q[...].astype(dt)))
        k = _with_lora(self, "k", x_BxTxD, jnp.einsum("btd,dkh->btkh", x_BxTxD, self.k[...].astype(dt)))
        v = _with_lora(self, "v", x_BxTxD, jnp.einsum("btd,dkh->btkh", x_BxTxD, self.v[...].astype(dt)))
        if cfg.attention_bias:
            q, k, v = q + self.q_bias[...].astype(dt), k + self.k_bias[...].astype(dt), v + self.v_bias[...].astype(dt)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = _rope(q, positions_BxT, cfg.rope_theta), _rope(k, positions_BxT, cfg.rope_theta)
        if cache is not None:
            cache = cache.write(layer, k, v, cache_index)  # cache_index: a scalar, or one slot per row
            k, v = cache.k_LxBxSxKxH[layer].astype(dt), cache.v_LxBxSxKxH[layer].astype(dt)
        b, t, n, h = q.shape
        kh = cfg.num_kv_heads
        q_BxTxKxGxH = q.reshape(b, t, kh, n // kh, h)
        scores = jnp.einsum("btkgh,bskh->bkgts", q_BxTxKxGxH, k, preferred_element_type=jnp.float32)
        scores = scores / math.sqrt(h)
        scores = jnp.where(mask_BxTxS[:, None, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(dt)
        out_BxTxKxGxH = jnp.einsum("bkgts,bskh->btkgh", probs, v)
        out_BxTxNxH = out_BxTxKxGxH.reshape(b, t, n, h)
        out = _with_lora(self, "o", out_BxTxNxH, jnp.einsum("btnh,nhd->btd", out_BxTxNxH, self.o[...].astype(dt)))
        return out, cache


class MLP(nnx.Module):
    def __init__(self, cfg: QwenConfig, rngs: nnx.Rngs):
        d, f, pd = cfg.hidden_size, cfg.intermediate_size, jnp.dtype(cfg.param_dtype)
        init = nnx.initializers.normal(0.02)
        self.gate = _param(rngs, init, (d, f), pd, ("embed", "mlp"))
        self.up = _param(rngs, init, (d, f), pd, ("embed", "mlp"))
        self.down = _param(rngs, init, (f, d), pd, ("mlp", "embed"))

    def __call__(self, x_BxTxD):
        dt = x_BxTxD.dtype
        g = _with_lora(self, "gate", x_BxTxD, x_BxTxD @ self.gate[...].astype(dt))
        u = _with_lora(self, "up", x_BxTxD, x_BxTxD @ self.up[...].astype(dt))
        h_BxTxF = jax.nn.silu(g) * u
        return _with_lora(self, "down", h_BxTxF, h_BxTxF @ self.down[...].astype(dt))


class Block(nnx.Module):
    def __init__(self, cfg: QwenConfig, rngs: nnx.Rngs):
        pd = jnp.dtype(cfg.param_dtype)
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd)
        self.attn = Attention(cfg, rngs)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x, positions, mask, layer, cache, cache_index):
        a, cache = self.attn(self.input_norm(x), positions, mask, layer, cache, cache_index)
        x = x + a
        return x + self.mlp(self.post_attn_norm(x)), cache


def _remat_block(block, layer: int, policy, x, positions, mask, cache, cache_index):
    """block(...) under jax.checkpoint(policy), its state passed in functionally (split/merge): with LoRA the base
    weights (a frozen input) and the adapters (differentiated) come from different traces, and nnx.remat, which writes
    the block state back, refuses to mutate a Param from another trace level."""
    graphdef, state = nnx.split(block)

    def run(state, x, positions, mask, cache, cache_index):
        return nnx.merge(graphdef, state)(x, positions, mask, layer, cache, cache_index)

    return jax.checkpoint(run, policy=policy)(state, x, positions, mask, cache, cache_index)


def _scan_blocks(layers, x, positions, mask, cache, cache_index, policy):
    """The blocks as one lax.scan over their states stacked along a new leading axis (QwenConfig.scan_layers): the
    layer index is the scan counter, so the KV cache is carried whole and written in place as in the loop."""
    graphdef = nnx.graphdef(layers[0])
    if any(nnx.graphdef(b) != graphdef for b in layers):
        raise ValueError("QwenConfig.scan_layers needs identical blocks (e.g. LoRA adapters on every layer or none)")
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.state(b) for b in layers])

    def body(carry, state_and_layer):
        x, cache = carry
        state, layer = state_and_layer
        x, cache = nnx.merge(graphdef, state)(x, positions, mask, layer, cache, cache_index)
        return (shard_activation(x), cache), None

    if policy is not None:
        body = jax.checkpoint(body, policy=policy, prevent_cse=False)  # prevent_cse is not needed inside scan
    (x, cache), _ = jax.lax.scan(body, (x, cache), (stacked, jnp.arange(len(layers), dtype=jnp.int32)))
    return x, cache


class Qwen(nnx.Module):
    """`Qwen(cfg, rngs=nnx.Rngs(seed))(tokens_BxT, positions_BxT, mask_BxTxS, cache=None, cache_index=0)`
    -> (logits_BxTxV float32, cache | None), which is `logits(hidden(...))`: `hidden` runs everything up to the final
    norm (compute dtype, B x T x D) and `logits` applies the lm_head, so callers that need only some positions'
    logits (prefill: the last one) or reductions of them (training log-probs, in chunks) never hold B x T x V."""

    def __init__(self, cfg: QwenConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pd = jnp.dtype(cfg.param_dtype)
        init = nnx.initializers.normal(0.02)
        self.embed = _param(rngs, init, (cfg.vocab_size, cfg.hidden_size), pd, ("vocab", "embed"))
        self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd)
        if not cfg.tie_word_embeddings:
            self.lm_head = _param(rngs, init, (cfg.hidden_size, cfg.vocab_size), pd, ("embed", "vocab"))

    def __call__(self, tokens_BxT, positions_BxT, mask_BxTxS, cache: KVCache | None = None, cache_index=0):
        hidden_BxTxD, cache = self.hidden(tokens_BxT, positions_BxT, mask_BxTxS, cache, cache_index)
        return self.logits(hidden_BxTxD), cache

    def hidden(self, tokens_BxT, positions_BxT, mask_BxTxS, cache: KVCache | None = None, cache_index=0):
        """-> (hidden_BxTxD after the final norm, in the compute dtype; cache | None): the model without its lm_head."""
        cfg = self.cfg
        dt = cfg.compute_dtype
        x = shard_activation(jnp.take(self.embed[...], tokens_BxT, axis=0).astype(dt))
        mask_BxTxS = jnp.asarray(mask_BxTxS, bool)
        cache_index = jnp.asarray(cache_index, jnp.int32)
        policy = REMAT_POLICIES[cfg.remat]
        if cfg.scan_layers:
            x, cache = _scan_blocks(self.layers, x, positions_BxT, mask_BxTxS, cache, cache_index, policy)
            return self.final_norm(x), cache
        for i, block in enumerate(self.layers):
            if policy is None:
                x, cache = block(x, positions_BxT, mask_BxTxS, i, cache, cache_index)
            else:
                x, cache = _remat_block(block, i, policy, x, positions_BxT, mask_BxTxS, cache, cache_index)
            x = shard_activation(x)
        return self.final_norm(x), cache

    def logits(self, hidden_BxTxD):
        """hidden_Bx...xD (from `hidden`, any positions) -> float32 logits_Bx...xV (bf16 inputs, fp32 accumulation)."""
        x, dt = hidden_BxTxD, hidden_BxTxD.dtype
        if self.cfg.tie_word_embeddings:
            logits = jnp.einsum("...d,vd->...v", x, self.embed[...].astype(dt), preferred_element_type=jnp.float32)
        else:
            logits = jnp.einsum("...d,dv->...v", x, self.lm_head[...].astype(dt), preferred_element_type=jnp.float32)
        return shard_activation(logits.astype(jnp.float32))
