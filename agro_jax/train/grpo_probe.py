"""What GRPO trains on and how it is watched: the prompt pool (grpo.prompts) and the held-out probe
(grpo.probe_every / probe_examples / probe_samples), logged as probe_init/* (the cold-start policy) and probe/* in
grpo/metrics.jsonl.

The probe is greedy (probe_samples 0: what evaluation scores) or the expected reward of probe_samples samples per
question at the rollout temperature (what GRPO optimizes). Sampled probes draw with the same key every time, so two
probes differ by the policy, not by the draw (common random numbers: a policy that did not change scores the same).
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np

from agro_jax.train.loop import stage_dir


def prompt_filter(cfg, workdir) -> dict:
    """grpo.prompts: "train" (every train example) | "not_in_sft" (those the cold start did not select, from
    <workdir>/sft/selected.jsonl: questions whose literal values the policy has not memorized)."""
    how = str(cfg.get("prompts", "train"))
    if how == "train":
        return {}
    if how != "not_in_sft":
        raise ValueError(f"config.grpo.prompts must be 'train' or 'not_in_sft', got {how!r}")
    path = stage_dir(workdir, "sft") / "selected.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"config.grpo.prompts='not_in_sft' needs the cold start's selection {path}; run sft")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    print(f"[grpo] prompts: train examples not among the {len(rows)} the cold start selected")
    return {"exclude": {(r["question"], r["sql"]) for r in rows}}


def probe_examples(config, n: int) -> list[dict]:
    """The fixed probe set: the first n examples of the eval split (held out from training)."""
    from agro_jax.data.loader import load_examples

    return load_examples(config.data.data_dir, config.eval.split)[:n]


def probe(env, params, examples, config, prefix: str) -> dict:
    """The agent on the probe set with `params`: EX, mean reward and format rate under the training reward, over one
    greedy episode per question or grpo.probe_samples sampled ones (`probe_init/*`: the initial policy, logged with
    step 1; `probe/*`: after that row's update)."""
    from agro_jax.rollout.batch import rollout_metrics
    from agro_jax.rollout.loop import run_rollouts

    samples = int(config.grpo.get("probe_samples", 0))
    if samples < 0:
        raise ValueError(f"config.grpo.probe_samples={samples} must be >= 0 (0: greedy)")
    t0 = time.perf_counter()
    ro = run_rollouts(
        env.sampler, params, examples, env.executor, config.rollout, group_size=max(1, samples),
        rng=jax.random.key(int(config.seed)), reward_cfg=config.reward, greedy=samples == 0,
    )  # fmt: skip
    m = rollout_metrics(ro, config.reward, np.ones(len(ro.rewards_B), bool))  # the training rollouts' EX / format rule
    return {f"{prefix}/ex": m["ex"], f"{prefix}/reward": m["reward_mean"], f"{prefix}/format_rate": m["format_rate"],
            f"{prefix}/episodes": len(ro.rewards_B), f"time/{prefix}": time.perf_counter() - t0}  # fmt: skip
