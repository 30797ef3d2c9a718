"""Rollouts: the agent protocol (agent.py: prompt, think / `<sql>` / observation / `<answer>`), the jitted KV-cache
sampler (sampler.py `Sampler.generate`), the multi-turn host loop against the executor (loop.py `run_rollouts`),
the environments the trainer rolls out in (envs.py `ENVS`: sql, toy) and one GRPO batch with dynamic sampling
(batch.py `collect_rollouts`).
"""
