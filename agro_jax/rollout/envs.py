"""GRPO environments: what the trainer rolls out. The trainer sees only `prompt_iterator(exclude)` (an iterator with
get_state/set_state, saved in checkpoints), `rollout(params, examples, rng) -> Rollout` and `logp_temperature`, the
temperature of the policy its rollouts sample (and GRPO trains); `ENVS` maps config.grpo.env to the class, all built
as `cls(config, graphdef, rest, model_cfg, tokenizer)`.

- SqlEnv: factory prompts -> multi-turn agent rollouts (rollout/loop.py) -> execution rewards; everything
  SQL-specific stays here and in the rollout and sql packages.
- ToyEnv: a learnable single-turn task, fixed-length completions, reward = share of "good" tokens (ids <
  vocab_size // 8: a random policy scores ~1/8, a policy that learned it ~1). It exercises the real model, loss,
  optimizer, checkpointing and resume without a tokenizer, data or executor: the smoke task for tests (learning,
  bit-exact resume) and benchmarks. Sampling is a plain full-forward loop (completions are a handful of tokens).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from agro_jax.data.loader import make_prompt_iterator
from agro_jax.model.qwen import make_causal_mask, positions_from_valid
from agro_jax.rl.grpo import logp_temperature
from agro_jax.rollout import loop
from agro_jax.rollout.sampler import Sampler
from agro_jax.sql.executor import Executor


class SqlEnv:
    def __init__(self, config, graphdef, rest, model_cfg, tokenizer):
        if tokenizer is None:
            raise ValueError("config.grpo.env='sql' needs a tokenizer (config.tokenizer.path or <workdir>/tokenizer)")
        self.config, self.tokenizer = config, tokenizer
        self.logp_temperature = logp_temperature(config.rollout)
        self.executor = Executor.from_config(config.executor)
        self.sampler = Sampler(graphdef, rest, model_cfg, tokenizer, config.rollout)

    def prompt_iterator(self, exclude: set | None = None):
        """This host's share of the prompts: each host samples its own rows (multihost.place_batch joins them);
        exclude: (question, sql) pairs left out (grpo.prompts "not_in_sft")."""
        d, hosts = self.config.data, jax.process_count()
        per_step = int(self.config.grpo.prompts_per_step)
        if per_step % hosts:
            raise ValueError(f"config.grpo.prompts_per_step={per_step} must be divisible by the {hosts} hosts")
        return make_prompt_iterator(
            d.data_dir,
            d.train_split,
            batch_size=per_step // hosts,
            seed=int(self.config.seed),
            shard_index=jax.process_index(),
            shard_count=hosts,
            exclude=exclude,
        )

    def rollout(self, params, examples, rng):
        """Rewards come from run_rollouts (compute_rewards against ex['sql']); timings split generate/execute/reward."""
        return loop.run_rollouts(
            self.sampler,
            params,
            list(examples),
            self.executor,
            self.config.rollout,
            group_size=int(self.config.grpo.group_size),
            rng=rng,
            reward_cfg=self.config.reward,
        )

    def close(self):
        self.executor.close()


# ------------------------------------------------------------------------------------------------------------ toy

PROMPT_LEN = 6
COMPLETION_LEN = 4


@dataclasses.dataclass
class ToyRollout:
    tokens_BxT: np.ndarray
    valid_BxT: np.ndarray
    loss_mask_BxT: np.ndarray
    old_logp_BxT: np.ndarray
    group_ids_B: np.ndarray
    rewards_B: np.ndarray
    num_turns_B: np.ndarray
    timings: dict


class CountingIterator:
    """Yields batches of prompt ids; its state is one int, so save/restore is trivially exact."""

    def __init__(self, batch_size: int):
        self.batch_size, self.index = batch_size, 0

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        ids = np.arange(self.index, self.index + self.batch_size)
        self.index += self.batch_size
        return ids

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: dict) -> None:
        self.index = int(state["index"])


class ToyEnv:
    def __init__(self, config, graphdef, rest, model_cfg, tokenizer=None):
        self.cfg, self.vocab = config.grpo, int(model_cfg.vocab_size)
        self.seed, self.logp_temperature = int(config.seed), 1.0  # samples the raw logits
        self.good = max(self.vocab // 8, 1)

        @jax.jit
        def generate(params, prompt_NxP, rng):
            model = nnx.merge(graphdef, params, rest)
            n = prompt_NxP.shape[0]
            tokens = jnp.concatenate([prompt_NxP, jnp.zeros((n, COMPLETION_LEN), jnp.int32)], 1)
            valid = jnp.ones_like(tokens, bool)  # causal: the zero placeholders never influence earlier positions
            mask, pos = make_causal_mask(valid), positions_from_valid(valid)
            logps = []
            for i in range(COMPLETION_LEN):
                logits = model(tokens, pos, mask)[0][:, PROMPT_LEN + i - 1].astype(jnp.float32)
                tok = jax.random.categorical(jax.random.fold_in(rng, i), logits)
                logps.append(jnp.take_along_axis(jax.nn.log_softmax(logits), tok[:, None], 1)[:, 0])
                tokens = tokens.at[:, PROMPT_LEN + i].set(tok)
            return tokens, jnp.stack(logps, 1)

        self._generate = generate

    def prompt_iterator(self, exclude: set | None = None) -> CountingIterator:
        if exclude:
            raise ValueError("config.grpo.prompts='not_in_sft' leaves out factory examples: it needs grpo.env='sql'")
        return CountingIterator(int(self.cfg.prompts_per_step))

    def rollout(self, params, prompt_ids, rng) -> ToyRollout:
        t0 = time.perf_counter()
        g = int(self.cfg.group_size)
        prompts = np.stack(
            [np.random.default_rng([self.seed, int(i)]).integers(self.good, self.vocab, PROMPT_LEN) for i in prompt_ids]
        ).astype(np.int32)
        prompt_NxP = np.repeat(prompts, g, axis=0)
        tokens, logp_NxL = jax.device_get(self._generate(params, prompt_NxP, rng))
        n, t = tokens.shape
        mask = np.zeros((n, t), np.float32)
        mask[:, PROMPT_LEN:] = 1.0
        old = np.zeros((n, t), np.float32)
        old[:, PROMPT_LEN:] = logp_NxL
        rewards = (tokens[:, PROMPT_LEN:] < self.good).mean(1).astype(np.float32)
        return ToyRollout(
            tokens_BxT=tokens.astype(np.int32),
            valid_BxT=np.ones((n, t), bool),
            loss_mask_BxT=mask,
            old_logp_BxT=old,
            group_ids_B=np.repeat(np.arange(len(prompt_ids)), g).astype(np.int32),
            rewards_B=rewards,
            num_turns_B=np.ones(n, np.int32),
            timings={"rollout": time.perf_counter() - t0},
        )


ENVS = {"sql": SqlEnv, "toy": ToyEnv}


def make_env(name: str, config, graphdef, rest, model_cfg, tokenizer=None):
    if name not in ENVS:
        raise ValueError(f"config.grpo.env={name!r} is not one of {sorted(ENVS)}")
    return ENVS[name](config, graphdef, rest, model_cfg, tokenizer)
