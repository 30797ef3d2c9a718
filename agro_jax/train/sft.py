"""Cold-start SFT (AGRO-SQL): gold trajectories -> diversity-aware selection -> masked NLL on agent tokens.

A factory example becomes a short agent trajectory: think -> <sql>gold</sql> -> <observation>(the gold SQL really
executed)</observation> -> <answer>gold</answer>, rendered by agro_jax/rollout/agent.py so SFT and RL see one format.
Selection (sft_select.py) keeps config.sft.num_selected trajectories that cover the hybrid SQL/reasoning space.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from agro_jax.rl import grpo
from agro_jax.train import sft_select


def gold_reasoning(example: dict) -> str:
    """A short, content-bearing think text derived from the example (no teacher model on the embedded setup): the
    schema elements the query needs. Restating the question was dropped: it doubled the agent tokens a small cold-start
    model must learn without adding information it can not read from the prompt."""
    import sqlglot
    from sqlglot import exp

    try:
        tree = sqlglot.parse_one(example["sql"], read="sqlite")
        tables = sorted({t.name for t in tree.find_all(exp.Table)})
        cols = sorted({c.name for c in tree.find_all(exp.Column)})[:6]
    except Exception:  # unparsable gold: the think text has no schema elements then
        tables, cols = [], []
    parts = []
    if tables:
        parts.append(f"Tables: {', '.join(tables)}.")
    if cols:
        parts.append(f"Columns: {', '.join(cols)}.")
    if example.get("evidence"):
        parts.append(f"Hint: {example['evidence']}")
    return " ".join(parts) or "I will query the database to answer."


def build_trajectories(examples: list[dict], executor, rollout_cfg) -> list[dict]:
    """Executes each gold SQL once (in parallel) and returns trajectory dicts (reasoning, sql, observation, ex)."""
    from agro_jax.rollout.agent import format_observation
    from agro_jax.sql.executor import Query

    results = executor.run_many([Query(ex["db_path"], ex["sql"]) for ex in examples], use_cache=True)
    out = []
    for ex, res in zip(examples, results):
        if not res.ok:  # a gold query that fails is bad data, not a trajectory to imitate
            continue
        obs = format_observation(res, int(rollout_cfg.observation_max_rows), int(rollout_cfg.observation_max_chars))
        out.append({"example": ex, "reasoning": gold_reasoning(ex), "sql": ex["sql"], "observation": obs})
    return out


def select_trajectories(trajs: list[dict], k: int, seed: int) -> list[dict]:
    emb = sft_select.hybrid_embeddings([t["sql"] for t in trajs], [t["reasoning"] for t in trajs])
    return [trajs[i] for i in sft_select.k_center_greedy(emb, k, seed)]


def tokenize_trajectories(trajs: list[dict], tokenizer, max_len: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """-> [(tokens_T int32, agent_mask_T f32)] via agent.render_transcript (agent tokens = the model's own turns)."""
    from agro_jax.rollout.agent import render_transcript

    seqs = []
    for t in trajs:
        ex = t["example"]
        tokens, mask = render_transcript(
            tokenizer,
            schema_text=ex["schema_text"],
            question=ex["question"],
            evidence=ex.get("evidence", ""),
            turns=t.get("turns") or [(t["reasoning"], t["sql"], t["observation"])],  # recovery: two (sft_recovery)
            answer=t["sql"],
        )
        tokens, mask = np.asarray(tokens, np.int32)[:max_len], np.asarray(mask, np.float32)[:max_len]
        if mask.sum() > 0:
            seqs.append((tokens, mask))
    return seqs


class SFTBatches:
    """Seeded per-epoch shuffles of padded sequences; state = (epoch, position) for exact resume."""

    def __init__(self, seqs, batch_size: int, seed: int, pad_id: int, pad_to_multiple: int = 32):
        if len(seqs) < batch_size:
            raise ValueError(f"SFT needs at least sft.batch_size={batch_size} sequences, got {len(seqs)}")
        t = max(len(s[0]) for s in seqs)
        t = -(-t // pad_to_multiple) * pad_to_multiple  # one padded length: one compile
        n = len(seqs)
        self.tokens = np.full((n, t), pad_id, np.int32)
        self.mask = np.zeros((n, t), np.float32)
        self.valid = np.zeros((n, t), bool)
        for i, (tok, m) in enumerate(seqs):
            self.tokens[i, : len(tok)], self.mask[i, : len(m)], self.valid[i, : len(tok)] = tok, m, True
        self.batch_size, self.seed, self.epoch, self.pos = batch_size, seed, 0, 0
        self.steps_per_epoch = n // batch_size

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.pos >= self.steps_per_epoch:
            self.epoch, self.pos = self.epoch + 1, 0
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.tokens))
        idx = perm[self.pos * self.batch_size : (self.pos + 1) * self.batch_size]
        self.pos += 1
        return {"tokens_BxT": self.tokens[idx], "valid_BxT": self.valid[idx], "loss_mask_BxT": self.mask[idx]}

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def set_state(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


def make_sft_step(graphdef, rest, optimizer: optax.GradientTransformation):
    """Jitted (params, opt_state, batch, frozen=None) -> (params, opt_state, metrics): token-mean NLL over agent tokens
    only, batch in grpo.to_micro layout, micro-batched exactly as in grpo.make_update_step; log-probs chunked by
    model.cfg.logits_chunk and `frozen` (LoRA base weights) as in grpo.make_update_step."""

    def loss_fn(params, mb, frozen):
        model = grpo.merge(graphdef, params, frozen, rest)
        logp_BxT, _ = grpo.sequence_logprobs(model, mb["tokens_BxT"], mb["valid_BxT"], entropy=False)
        mask = mb["loss_mask_BxT"]
        return -jnp.sum(logp_BxT * mask), jnp.sum(mask)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, batch, frozen=None):
        mbs = grpo._micro_major(batch)

        def body(carry, mb):
            g_acc, s_acc, c_acc = carry
            (s, c), g = grad_fn(params, mb, frozen)
            return (jax.tree.map(jnp.add, g_acc, g), s_acc + s, c_acc + c), None

        init = (jax.tree.map(jnp.zeros_like, params), jnp.float32(0), jnp.float32(0))
        (g, s, c), _ = jax.lax.scan(body, init, mbs)
        denom = jnp.maximum(c, 1.0)
        grads = jax.tree.map(lambda x: x / denom, g)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": s / denom, "grad_norm": optax.tree.norm(grads), "agent_tokens": c}

    return step
