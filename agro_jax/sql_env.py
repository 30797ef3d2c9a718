"""The real GRPO environment: factory prompts -> multi-turn agent rollouts (agro_jax/rollout.py) -> execution rewards.

The trainer only sees `prompt_iterator()` (a grain iterator with get_state/set_state, saved in checkpoints) and
`rollout(params, examples, rng) -> Rollout`; everything SQL-specific stays here and in the teammates' modules.
"""

from __future__ import annotations


class SqlEnv:
    def __init__(self, config, graphdef, rest, model_cfg, tokenizer):
        from agro_jax import rollout as rollout_lib
        from agro_jax.sampler import Sampler
        from agro_jax.sql.executor import Executor

        if tokenizer is None:
            raise ValueError("config.grpo.env='sql' needs a tokenizer (config.tokenizer.path or <workdir>/tokenizer)")
        self.config, self.tokenizer = config, tokenizer
        self.executor = Executor.from_config(config.executor)
        self.sampler = Sampler(graphdef, rest, model_cfg, tokenizer, config.rollout)
        self._rollout_lib = rollout_lib

    def prompt_iterator(self):
        """This host's share of the prompts: each host samples its own rows (multihost.place_batch joins them)."""
        import jax

        from agro_jax.data import make_prompt_iterator

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
        )

    def rollout(self, params, examples, rng):
        """Rewards come from run_rollouts (compute_rewards against ex['sql']); timings split generate/execute/reward."""
        return self._rollout_lib.run_rollouts(
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
