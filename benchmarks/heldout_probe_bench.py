"""Held-out expected EX of a run's cold start and GRPO policy: grpo_probe.probe with grpo.probe_samples=k (k sampled
episodes per question at the rollout temperature, one fixed key for both policies) on every example of the eval
split. Less noisy than greedy EX, which flips on a few questions; it is also what GRPO optimizes.

Run: python benchmarks/heldout_probe_bench.py <run workdir> [--samples 4] [--config configs/tiny_cpu.py]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workdir", help="a finished `agro-sql run` folder (factory/, tokenizer/, sft/, grpo/)")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--config", default="configs/tiny_cpu.py")
    ap.add_argument("--stages", default="sft,grpo")
    args = ap.parse_args()

    import jax

    from agro_jax.config import load_config
    from agro_jax.data.loader import load_examples
    from agro_jax.rl.grpo import split_model
    from agro_jax.rollout.envs import SqlEnv
    from agro_jax.train import grpo_probe
    from agro_jax.train.stages import build_policy, resolve_tokenizer

    run = pathlib.Path(args.workdir)
    overrides = [f"--config.data.data_dir={run}/factory/tfds", f"--config.grpo.probe_samples={args.samples}"]
    config = load_config(args.config, overrides)
    tokenizer = resolve_tokenizer(config, run)
    examples = load_examples(config.data.data_dir, config.eval.split)
    out = {"workdir": str(run), "samples": args.samples, "questions": len(examples)}
    for stage in args.stages.split(","):
        mesh, model, model_cfg = build_policy(config, int(config.model.vocab_size) or len(tokenizer),
                                              run / stage / "checkpoints")  # fmt: skip
        graphdef, params, rest = split_model(model)
        with jax.set_mesh(mesh):
            env = SqlEnv(config, graphdef, rest, model_cfg, tokenizer)
            try:
                out[stage] = grpo_probe.probe(env, params, examples, config, "probe")
            finally:
                env.close()
        print(f"[probe] {stage}: {json.dumps(out[stage])}", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":  # the executor's worker processes re-import this file
    main()
