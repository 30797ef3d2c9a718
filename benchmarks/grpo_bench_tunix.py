"""The Tunix side of benchmarks/grpo_bench.py: google-tunix GRPOLearner on the same local tiny Qwen2 and work.

Runs in its own venv (google-tunix pins safetensors<0.8): /work/venvs/tunix/bin/python grpo_bench_tunix.py SPEC.json
SPEC: {"model_dir", "prompts": [...], "group", "completion", "steps", "lr"}. Prints one JSON line: per-step seconds
(one global step = rollout of G completions per prompt + reward + advantages + one optimizer update), process CPU
seconds per step, the rollout part of each step, and the completion lengths Tunix trained on (its completion masks).
"""

import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402
from tunix.models.qwen2 import model as qwen2_model  # noqa: E402
from tunix.models.qwen2 import params as qwen2_params  # noqa: E402
from tunix.rl import rl_cluster as rl_cluster_lib  # noqa: E402
from tunix.rl.grpo import grpo_learner  # noqa: E402
from tunix.rl.rollout import base_rollout  # noqa: E402


def reward_text(text: str) -> float:
    """Same scripted reward as grpo_bench.py (share of vowels)."""
    return sum(c in "aeiou" for c in text) / max(len(text), 1)


def model_config(hf: dict) -> qwen2_model.ModelConfig:
    return qwen2_model.ModelConfig(
        num_layers=hf["num_hidden_layers"],
        vocab_size=hf["vocab_size"],
        embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"],
        num_heads=hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
        num_kv_heads=hf["num_key_value_heads"],
        rope_theta=int(hf["rope_parameters"]["rope_theta"]),
        norm_eps=hf["rms_norm_eps"],
        use_tied_embedding=hf["tie_word_embeddings"],
    )


def run(spec: dict) -> dict:
    model_dir, prompts, group = spec["model_dir"], list(spec["prompts"]), int(spec["group"])
    completion, steps = int(spec["completion"]), int(spec["steps"])
    hf = json.load(open(os.path.join(model_dir, "config.json")))
    tok = PreTrainedTokenizerFast.from_pretrained(model_dir)
    # Auto axes: Tunix's models index/gather without out_sharding (jax 0.10 make_mesh defaults to Explicit).
    mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    with jax.set_mesh(mesh):
        model = qwen2_params.create_model_from_safe_tensors(model_dir, model_config(hf), mesh)
    p_len = max(len(tok(p)["input_ids"]) for p in prompts)
    rollout_cfg = base_rollout.RolloutConfig(
        max_tokens_to_generate=completion,
        max_prompt_length=p_len,  # pad to the longest prompt, as TRL does (no bucket)
        kv_cache_size=p_len + completion,
        temperature=1.0,
        top_p=1.0,
        top_k=None,
        eos_tokens=[hf["vocab_size"] + 7],  # an id never sampled: full-length completions (TRL: min_new_tokens)
    )
    train_cfg = rl_cluster_lib.RLTrainingConfig(
        actor_optimizer=optax.adamw(float(spec["lr"])),
        eval_every_n_steps=10**9,
        max_steps=steps,
        pbar_description=None,
    )
    roles = (rl_cluster_lib.Role.ACTOR, rl_cluster_lib.Role.REFERENCE, rl_cluster_lib.Role.ROLLOUT)
    cluster_cfg = rl_cluster_lib.ClusterConfig(
        role_to_mesh=dict.fromkeys(roles, mesh),
        rollout_engine="vanilla",
        offload_to_cpu=False,
        training_config=train_cfg,
        rollout_config=rollout_cfg,
    )
    cluster = rl_cluster_lib.RLCluster(actor=model, reference=None, tokenizer=tok, cluster_config=cluster_cfg)
    algo = grpo_learner.GRPOConfig(num_generations=group, num_iterations=1, beta=0.0, epsilon=0.2)
    reward = lambda prompts, completions, **kw: [reward_text(c) for c in completions]  # noqa: E731
    learner = grpo_learner.GRPOLearner(rl_cluster=cluster, algo_config=algo, reward_fns=reward)

    times, cpu, rollout_s, lengths, ends = [], [], [], [], []
    step_fn, gen_fn, adv_fn = learner._run_global_step, cluster.generate, learner._generate_and_compute_advantage

    def timed_step(*a, **k):
        t0, c0 = time.perf_counter(), time.process_time()
        out = step_fn(*a, **k)
        jax.block_until_ready(nnx.state(cluster.actor_trainer.model))  # the update is dispatched asynchronously
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        ends.append(time.perf_counter())  # intervals between step ends also hold weight sync and metric buffering
        return out

    def timed_generate(*a, **k):
        t0 = time.perf_counter()
        out = gen_fn(*a, **k)
        rollout_s.append(time.perf_counter() - t0)
        return out

    def recorded_adv(*a, **k):
        ex = adv_fn(*a, **k)
        lengths.extend(np.asarray(ex.completion_mask).sum(-1).tolist())
        return ex

    learner._run_global_step, cluster.generate = timed_step, timed_generate
    learner._generate_and_compute_advantage = recorded_adv
    # Tunix repeats each batch leaf G times with np.repeat: prompts must be an array, not a list of str leaves.
    learner.train([{"prompts": np.array(prompts)} for _ in range(steps + 1)])
    return {
        "times": times,
        "cpu_s": cpu,
        "ends": ends,
        "rollout_s": rollout_s,
        "train_steps": int(cluster.actor_trainer.train_steps),
        "completion_len": [int(min(lengths)), int(max(lengths))],
        "completions": len(lengths),
        "prompt_len": p_len,
    }


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(json.dumps(run(json.load(f))))
