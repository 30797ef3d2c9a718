"""How much learning signal GRPO's sampled groups carry from a trained policy: the measurement behind "what a larger
run would need" (issue 19), without training.

For each rollout temperature, G samples per prompt (rollout.loop.run_rollouts, the GRPO stage's own rollouts with the
config's executor and rewards) on two prompt sets:
- train: the first N prompts of the GRPO prompt stream (the factory's train split, shuffled by config.seed);
- spider_errors: the Spider-subset questions whose greedy episode, in the given eval JSON (e.g. the cold start's
  `eval/spider/sft.json`), got an error back from its exploration query and then answered wrong.
Per set and temperature: reward mean, EX, format rate, the share of groups with any reward spread (GRPO's advantage
is 0 for a group of equal rewards: no gradient) with the first 2, 4 and all G samples, groups with at least one
correct sample, and episodes whose exploration query errored and that still answered correctly.

Run: python benchmarks/grpo_signal_bench.py --config configs/qwen25_coder_05b.py:cpu \
         --policy runs/qwen25_coder_05b_cpu/sft/checkpoints \
         --errors-from runs/qwen25_coder_05b_cpu/eval/spider/sft.json \
         --train 16 --group 8 --temperatures 0.7,1.0 --out runs/grpo_signal
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _errored(turns) -> bool:
    from agro_jax.eval.agent_eval import error_observation

    return any(error_observation(t) for t in turns)


def group_stats(rewards_NxG, errored_NxG, correct_NxG) -> dict:
    """Signal and recovery figures of N groups of G samples (numpy bool/float arrays)."""
    import numpy as np

    n, g = rewards_NxG.shape
    spread = {f"signal_groups_g{k}": int((np.ptp(rewards_NxG[:, :k], axis=1) > 0).sum()) for k in (2, 4, g) if k <= g}
    return dict(
        groups=n,
        samples=n * g,
        reward_mean=float(rewards_NxG.mean()),
        ex=float(correct_NxG.mean()),
        groups_any_correct=int(correct_NxG.any(axis=1).sum()),
        errored_samples=int(errored_NxG.sum()),
        errored_then_correct=int((errored_NxG & correct_NxG).sum()),
        **spread,
    )


def measure(env, params, examples, group, temperature, seed, samples_file=None) -> dict:
    import jax
    import numpy as np

    with env.config.rollout.unlocked():
        env.config.rollout.temperature = float(temperature)
    t0 = time.perf_counter()
    ro = env.rollout(params, examples, jax.random.key(seed))
    elapsed = time.perf_counter() - t0
    n = len(examples)
    order = np.argsort(ro.group_ids_B, kind="stable")  # rows of one prompt together, in sample order
    rewards = ro.rewards_B[order].reshape(n, group)
    correct = np.array([bool(ro.reward_infos[i].get("matched")) for i in order]).reshape(n, group)
    errored = np.array([_errored(ro.transcripts[i]) for i in order]).reshape(n, group)
    fmt = np.mean([r in ("answer",) for r in ro.finish_reasons])
    stats = group_stats(rewards, errored, correct)
    if samples_file is not None:  # every sample, for reading transcripts behind the counts
        with open(samples_file, "a") as f:
            for i in order:
                row = dict(temperature=temperature, question=examples[ro.group_ids_B[i]]["question"],
                           reward=float(ro.rewards_B[i]), matched=bool(ro.reward_infos[i].get("matched")),
                           final_sql=ro.final_sqls[i], turns=ro.transcripts[i])  # fmt: skip
                f.write(json.dumps(row) + "\n")
    stats.update(
        temperature=float(temperature),
        format_rate=float(fmt),
        mean_turns=float(ro.num_turns_B.mean()),
        mean_sampled_nll=float(-ro.old_logp_BxT.sum() / max(1.0, ro.loss_mask_BxT.sum())),
        generated_tokens=int(ro.loss_mask_BxT.sum()),
        seconds=round(elapsed, 1),
    )
    return stats


def spider_error_examples(config, executor, errors_from: str) -> list[dict]:
    from agro_jax.eval.agent_eval import spider_subset

    report = json.loads(pathlib.Path(errors_from).read_text())
    subset = spider_subset(config.eval.spider_dir, int(config.eval.spider_every), executor)
    if len(subset) != int(report["num_examples"]):
        raise SystemExit(
            f"{errors_from}: {report['num_examples']} examples, the config's Spider subset has {len(subset)}"
        )
    rows = [r for r in report["per_example"] if _errored(r["transcript"]["turns"]) and not r["matched"]]
    return [subset[r["index"]] for r in rows]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument(
        "--policy", required=True, help="checkpoints dir / step dir / HF dir (LoRA: its base_chain applies)"
    )
    ap.add_argument("--errors-from", default="", help="an eval JSON (Spider subset) whose errored episodes to resample")
    ap.add_argument("--errors", type=int, default=0, help="at most this many errored questions (0: all)")
    ap.add_argument("--train", type=int, default=16, help="train prompts")
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--temperatures", default="0.7,1.0")
    ap.add_argument("--out", default="runs/grpo_signal")
    ap.add_argument("overrides", nargs="*", help="--config.x=y overrides")
    args = ap.parse_args()

    import jax

    from agro_jax.config import load_config
    from agro_jax.rl.grpo import split_model
    from agro_jax.rollout.envs import SqlEnv
    from agro_jax.train.stages import build_policy, resolve_tokenizer

    config = load_config(args.config, args.overrides)
    with config.unlocked():
        config.grpo.group_size = args.group
        config.grpo.prompts_per_step = args.train
        if not config.data.data_dir:
            config.data.data_dir = str(pathlib.Path(config.workdir) / "factory" / "tfds")
    tokenizer = resolve_tokenizer(config, config.workdir)
    mesh, model, model_cfg = build_policy(config, int(config.model.vocab_size) or len(tokenizer), args.policy)
    graphdef, params, rest = split_model(model)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"command": " ".join(["python", *sys.argv]), "policy": args.policy, "group": args.group, "sets": {}}
    with jax.set_mesh(mesh):
        env = SqlEnv(config, graphdef, rest, model_cfg, tokenizer)
        try:
            sets = {"train": next(env.prompt_iterator())}
            if args.errors_from:
                errs = spider_error_examples(config, env.executor, args.errors_from)
                sets["spider_errors"] = errs[: args.errors or None]
            for name, examples in sets.items():
                for k, temp in enumerate(float(t) for t in args.temperatures.split(",")):
                    samples = out / f"samples_{name}.jsonl"
                    stats = measure(env, params, examples, args.group, temp, int(config.seed) + k, samples)
                    results["sets"].setdefault(name, []).append(stats)
                    print(f"[signal] {name} T={temp}: {json.dumps(stats)}", flush=True)
                    (out / "signal.json").write_text(json.dumps(results, indent=1))
        finally:
            env.close()
    print(f"[signal] wrote {out / 'signal.json'}")


if __name__ == "__main__":
    main()
