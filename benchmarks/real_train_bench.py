"""Training steps on the real Qwen2.5-Coder-0.5B-Instruct (float32, CPU): memory and time of one GRPO update with
plain vs chunked log-probs vs chunked + LoRA, and repeated SFT / GRPO steps on one batch (loss must fall).

Each measurement runs in its own process (peak RSS is per process): the child builds the policy from the real model's
HF dir (agro_jax.model.real_model.ensure_real_model), makes the batch, AOT-compiles the stage's jitted step (XLA's
memory_analysis: arguments / outputs / temporaries), resets the kernel's peak-RSS counter (/proc/self/clear_refs)
and then runs the compiled step, so "peak RSS" is the step itself: params + optimizer state + whatever the step
allocates, not the import or the compile. Batches are agent transcripts (the project's chat prompt + think / SQL /
observation / answer turns, rendered by rollout.agent.render_transcript) tiled to T tokens; the GRPO loss mask covers
the agent tokens, advantages are +-1 / +-0.5 and old log-probs come from the policy itself (ratio 1 at step 1).

Run: python benchmarks/real_train_bench.py memory [--B 4 --T 1024 --chunk 128]
     python benchmarks/real_train_bench.py repeat [--B 2 --T 256 --steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODES = {  # name -> config overrides (all: float32, remat full + scan_layers: see run_child)
    "plain": ["--config.model.logits_chunk=0"],
    "chunked": ["--config.model.logits_chunk={chunk}"],
    "plain+lora": ["--config.model.logits_chunk=0", "--config.model.lora.rank=16", "--config.model.lora.alpha=32"],
    "chunked+lora": [
        "--config.model.logits_chunk={chunk}",
        "--config.model.lora.rank=16",
        "--config.model.lora.alpha=32",
    ],
}
EXAMPLES = [
    ("CREATE TABLE singer (singer_id INT PRIMARY KEY, name TEXT, country TEXT, age INT)", "How many singers are there?",
     "Count the rows of singer.", "SELECT count(*) FROM singer", "[(6,)]"),
    ("CREATE TABLE stadium (stadium_id INT PRIMARY KEY, name TEXT, capacity INT, city TEXT)",
     "What is the name of the stadium with the largest capacity?", "Order stadiums by capacity.",
     "SELECT name FROM stadium ORDER BY capacity DESC LIMIT 1", "[('Balmoor',)]"),
]  # fmt: skip


def _vm(key: str) -> float:
    """GB of /proc/self/status VmHWM (peak RSS) or VmRSS."""
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1e6
    return float("nan")


def _meminfo(key: str) -> float:
    for line in open("/proc/meminfo"):
        if line.startswith(key):
            return int(line.split()[1]) / 1e6
    return float("nan")


def make_batch(tokenizer, b: int, t: int, pad_id: int):
    """tokens/valid/agent-mask [b, t]: transcript i % 2, tiled (a long multi-turn episode) and cut at t."""
    import numpy as np

    from agro_jax.rollout.agent import render_transcript

    rows = []
    for schema, question, think, sql, obs in EXAMPLES:
        rows.append(render_transcript(tokenizer, schema_text=schema, question=question, turns=[(think, sql, obs)],
                                      answer=sql))  # fmt: skip
    tokens = np.full((b, t), pad_id, np.int32)
    mask = np.zeros((b, t), np.float32)
    for i in range(b):
        tok, m = rows[i % len(rows)]
        reps = -(-t // len(tok))
        tokens[i], mask[i] = np.tile(tok, reps)[:t], np.tile(m, reps)[:t]
    return tokens, np.ones((b, t), bool), mask


def child(a) -> dict:
    import jax
    import numpy as np

    from agro_jax.config import load_config
    from agro_jax.model import lora
    from agro_jax.model.real_model import ensure_real_model
    from agro_jax.model.tokenizer import load_tokenizer
    from agro_jax.rl import grpo
    from agro_jax.scale.sharding import make_mesh, shard_batch
    from agro_jax.train import optim, sft
    from agro_jax.train.stages import build_policy

    t0 = time.perf_counter()
    hf = ensure_real_model()
    over = [x.format(chunk=a.chunk) for x in MODES[a.mode]]
    # Full fine-tuning: GRPO at 1e-6 (TRL's default; Adam's first step moves every weight by ~lr, and at 1e-5 the
    # repeated GRPO loss rose 0 -> 0.24 -> 0.03), SFT at 1e-5; LoRA adapters 1e-4. Constant LR, no warmup: a repeat
    # is the same step (with the configs' warmup the first step has LR 0 and leaves the loss unchanged).
    lr = a.lr or (1e-4 if "lora" in a.mode else 1e-6 if a.stage == "grpo" else 1e-5)
    config = load_config("configs/tiny_cpu.py", [f"--config.model.hf_path={hf}", f"--config.model.remat={a.remat}",
                                                 f"--config.model.scan_layers={bool(a.scan_layers)}",
                                                 f"--config.{a.stage}.optim.learning_rate={lr}",
                                                 f"--config.{a.stage}.optim.warmup_steps=0",
                                                 f"--config.{a.stage}.optim.schedule=constant",
                                                 *over])  # fmt: skip
    tok = load_tokenizer(str(hf))
    mesh = make_mesh(config.mesh)
    _, model, _ = build_policy(config, None)
    graphdef, params, frozen, rest = lora.split(model)
    del model
    stage_cfg = config[a.stage]
    opt = optim.make_optimizer(stage_cfg.optim)
    tokens, valid, mask = make_batch(tok, a.B, a.T, tok.pad_token_id or 0)
    with jax.set_mesh(mesh):
        opt_state = jax.eval_shape(opt.init, params)  # abstract until the compile says the step fits in memory
        tree = {"tokens_BxT": tokens, "valid_BxT": valid, "loss_mask_BxT": mask}
        if a.stage == "grpo":
            # Old log-probs of the policy itself, chunked and gradient-free whatever the mode (not what is measured).
            logp = jax.jit(lambda p, f, t, v: grpo.sequence_logprobs(grpo.merge(graphdef, p, f, rest), t, v,
                                                                     entropy=False, chunk=128)[0])  # fmt: skip
            tree["old_logp_BxT"] = np.asarray(logp(params, frozen, tokens, valid))
            tree["adv_B"] = np.resize(np.array([1.0, -1.0, 0.5, -0.5], np.float32), a.B)
            step = grpo.make_update_step(graphdef, rest, opt, stage_cfg)
        else:
            step = sft.make_sft_step(graphdef, rest, opt)
        batch = shard_batch(grpo.to_micro(tree, 1), mesh)
        setup_s, rss_setup = time.perf_counter() - t0, _vm("VmRSS")
        t1 = time.perf_counter()
        compiled = step.lower(params, opt_state, batch, frozen).compile()
        compile_s = time.perf_counter() - t1
        ma = compiled.memory_analysis()
        # What the step needs on top of this process (XLA's own plan): optimizer state + temporaries + outputs that
        # are not donated buffers reused in place.
        opt_gb = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(opt_state)) / 1e9
        need_gb = opt_gb + (ma.temp_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes) / 1e9
        avail_gb = _meminfo("MemAvailable")
        times, losses, rss_before, file_before = [], [], float("nan"), float("nan")
        if a.analyze or need_gb > avail_gb - 1.0:
            skipped = "analyze only" if a.analyze else f"not run: needs ~{need_gb:.1f} GB, {avail_gb:.1f} GB available"
        else:
            skipped = ""
            opt_state = opt.init(params)
            open("/proc/self/clear_refs", "w").write("5")  # peak RSS from here on: the step(s) only
            rss_before = _vm("VmRSS")  # params + optimizer state + what setup left resident (HF load, compile)
            file_before = _vm("RssFile")  # of which file-backed pages (mmapped checkpoint, libraries)
            for _ in range(a.steps):
                t2 = time.perf_counter()
                params, opt_state, m = compiled(params, opt_state, batch, frozen)
                m = jax.device_get(m)
                times.append(time.perf_counter() - t2)
                losses.append(float(m["loss"]))
    n_train = sum(x.size for x in jax.tree.leaves(params))
    return {
        "stage": a.stage, "mode": a.mode, "B": a.B, "T": a.T, "chunk": a.chunk, "remat": a.remat, "lr": lr,
        "scan_layers": bool(a.scan_layers),
        "trained_params": n_train, "frozen_params": sum(x.size for x in jax.tree.leaves(frozen)),
        "setup_s": setup_s, "compile_s": compile_s, "step_s": times, "loss": losses, "skipped": skipped,
        "need_gb": need_gb, "avail_gb": avail_gb, "opt_state_gb": opt_gb,
        "rss_setup_gb": rss_setup, "rss_before_step_gb": rss_before, "rss_file_before_step_gb": file_before,
        "peak_rss_step_gb": _vm("VmHWM") if times else float("nan"),
        "xla_args_gb": ma.argument_size_in_bytes / 1e9, "xla_out_gb": ma.output_size_in_bytes / 1e9,
        "xla_temp_gb": ma.temp_size_in_bytes / 1e9, "xla_alias_gb": ma.alias_size_in_bytes / 1e9,
        "load_avg": os.getloadavg()[0], "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }  # fmt: skip


# With the 24 blocks unrolled, XLA:CPU's schedule keeps every block's activations whatever the remat policy (XLA's
# memory plan for the chunked LoRA update at B=4, T=512: 12.3 GB of temporaries with the default scheduler, 8.3 GB
# with --xla_cpu_enable_concurrency_optimized_scheduler=false, 2.6 GB with scan_layers, which runs the backward one
# block per loop iteration). Hence scan_layers on by default here; --xla-flags passes extra XLA flags to the children.
def run_child(xla_flags: str = "", **kw) -> dict:
    args = [sys.executable, __file__, "child"] + [f"--{k}={v}" for k, v in kw.items()]
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + xla_flags).strip())
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    if out.returncode:
        return {**kw, "error": (out.stderr or out.stdout).strip().splitlines()[-1:], "rc": out.returncode}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["memory", "repeat", "child"])
    ap.add_argument("--mode", default="chunked", choices=list(MODES))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--stage", default="grpo", choices=["grpo", "sft"])
    ap.add_argument("--B", type=int, default=None)
    ap.add_argument("--T", type=int, default=None)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--remat", default="full")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--lr", type=float, default=0.0)
    ap.add_argument("--analyze", type=int, default=0, help="1: compile and report XLA's memory plan, do not run")
    ap.add_argument("--xla-flags", dest="xla_flags", default="", help="XLA_FLAGS added for the children")
    ap.add_argument("--scan-layers", "--scan_layers", dest="scan_layers", type=int, default=1, help="model.scan_layers")
    a = ap.parse_args(argv)
    if a.what == "child":
        print(json.dumps(child(a)))
        return 0
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} load average {os.getloadavg()}", flush=True)
    kw = dict(chunk=a.chunk, remat=a.remat, analyze=a.analyze, xla_flags=a.xla_flags, scan_layers=a.scan_layers)
    if a.what == "memory":
        B, T, steps = a.B or 4, a.T or 1024, a.steps or 1
        rows = [run_child(mode=m, stage="grpo", B=B, T=T, steps=steps, **kw) for m in a.modes.split(",")]
        print(f"| GRPO update, B={B} T={T} float32 | peak RSS of the step GB | RSS before it GB | XLA plan: args / "
              "temp / out GB | optimizer state GB | step s | compile s | trained params | load avg |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            if "error" in r:
                print(f"| {r['mode']} | failed: {r['error']} (rc {r['rc']}) |")
                continue
            ran = f"{r['peak_rss_step_gb']:.2f}" if r["step_s"] else r["skipped"]
            step = f"{min(r['step_s']):.1f}" if r["step_s"] else "-"
            print(f"| {r['mode']} | {ran} | {r['rss_before_step_gb']:.2f} | "
                  f"{r['xla_args_gb']:.2f} / {r['xla_temp_gb']:.2f} / {r['xla_out_gb']:.2f} | "
                  f"{r['opt_state_gb']:.2f} | {step} | {r['compile_s']:.0f} | {r['trained_params']:,} | "
                  f"{r['load_avg']:.1f} |")  # fmt: skip
    else:
        B, T, steps = a.B or 2, a.T or 256, a.steps or 4
        rows = []
        print("| stage | mode | loss per repeat of the same batch | step s (median) | peak RSS GB | load avg |")
        print("|---|---|---|---:|---:|---:|")
        for stage in ("sft", "grpo"):
            for m in a.modes.split(","):
                r = run_child(mode=m, stage=stage, B=B, T=T, steps=steps, **kw)
                rows.append(r)
                if "error" in r or not r["step_s"]:
                    print(f"| {stage} | {m} | {r.get('error') or r['skipped']} |", flush=True)
                    continue
                loss = " -> ".join(f"{x:.4f}" for x in r["loss"])
                print(f"| {stage} | {m} | {loss} | {sorted(r['step_s'])[len(r['step_s']) // 2]:.1f} | "
                      f"{r['peak_rss_step_gb']:.2f} | {r['load_avg']:.1f} |", flush=True)  # fmt: skip
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
