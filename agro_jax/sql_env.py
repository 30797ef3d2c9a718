"""The real GRPO environment: factory prompts -> multi-turn agent rollouts (agro_jax/rollout.py) -> execution rewards.

The trainer only sees `prompt_iterator()` (a grain iterator with get_state/set_state, saved in checkpoints) and
`rollout(params, examples, rng) -> Rollout`; everything SQL-specific stays here and in the teammates' modules.
"""

from __future__ import annotations

import time

import numpy as np


class SqlEnv:
    def __init__(self, config, graphdef, rest, model_cfg, tokenizer):
        from agro_jax import rollout as rollout_lib
        from agro_jax.sql.executor import Executor

        if tokenizer is None:
            raise ValueError("config.grpo.env='sql' needs a tokenizer (config.tokenizer.path or <workdir>/tokenizer)")
        self.config, self.tokenizer = config, tokenizer
        self.executor = Executor.from_config(config.executor)
        self.sampler = rollout_lib.Sampler(graphdef, rest, model_cfg, tokenizer, config.rollout)
        self._rollout_lib = rollout_lib

    def prompt_iterator(self):
        from agro_jax.data import make_prompt_iterator

        d = self.config.data
        return make_prompt_iterator(
            d.data_dir, d.train_split, batch_size=int(self.config.grpo.prompts_per_step), seed=int(self.config.seed)
        )

    def rollout(self, params, examples, rng):
        from agro_jax.rewards import compute_rewards

        t0 = time.perf_counter()
        ro = self._rollout_lib.run_rollouts(
            self.sampler,
            params,
            examples,
            self.executor,
            self.config.rollout,
            group_size=int(self.config.grpo.group_size),
            rng=rng,
        )
        t1 = time.perf_counter()
        g = int(self.config.grpo.group_size)
        gold = [ex["sql"] for ex in examples for _ in range(g)]
        dbs = [ex["db_path"] for ex in examples for _ in range(g)]
        rewards, _ = compute_rewards(ro.final_sqls, gold, dbs, self.executor, self.config.reward)
        ro.rewards_B = np.asarray(rewards, np.float32)
        ro.timings = dict(getattr(ro, "timings", {}) or {}, rollout=t1 - t0, reward=time.perf_counter() - t1)
        return ro

    def close(self):
        self.executor.close()
