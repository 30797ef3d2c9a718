"""GRPO step time: agro-jax vs TRL GRPOTrainer vs Tunix GRPOLearner on the same tiny Qwen2, prompts, group size and
lengths (CPU), in one run.

One step = sample G completions for each prompt + reward + one optimizer update (beta=0, mu=1, no eval, no logging
sinks). Both sides load the same local HF checkpoint; completions are forced to the full length on both sides
(TRL: min_new_tokens; agro-jax: no stop token) so they do the same amount of work.

Tunix (google-tunix 0.1.7 pins safetensors<0.8) runs in its own venv, as a subprocess (benchmarks/grpo_bench_tunix.py)
on the same checkpoint dir and prompts: `python -m venv /work/venvs/tunix && /work/venvs/tunix/bin/pip install
google-tunix==0.1.7`; its completions are forced to full length with an EOS id that is never sampled.

Run: python benchmarks/grpo_bench.py [--steps 10] [--prompts 8] [--group 4] [--completion 32] [--torch-threads 1]
                                     [--hidden 64] [--layers 2]
                                     [--tunix-python /work/venvs/tunix/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

WORDS = "select name from students where age order by count group having join on table city how many older than".split()


def make_tiny_qwen2(out_dir: str, hidden: int = 64, layers: int = 2):
    """Byte-level BPE tokenizer + random tiny Qwen2, saved as a local HF checkpoint."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    hf_tok.save_pretrained(out_dir)
    cfg = Qwen2Config(
        vocab_size=len(hf_tok),
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(out_dir)
    return hf_tok


def make_prompts(n: int) -> list[str]:
    return [f"question {i}: how many students are older than {10 + i} in city {i % 3}?" for i in range(n)]


def reward_text(text: str) -> float:
    """A cheap scripted reward with spread inside every group (same on both sides): share of vowels."""
    return sum(c in "aeiou" for c in text) / max(len(text), 1)


def bench_trl(model_dir: str, tokenizer, prompts, group: int, completion: int, steps: int) -> list[float]:
    import transformers
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    times: list[float] = []
    cpu: list[float] = []  # process CPU seconds per step (all threads): less sensitive to a busy machine than wall
    ends: list[float] = []  # step end times: intervals between them include whatever runs between steps

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)
            cpu.append(time.process_time() - self.c0)
            ends.append(time.perf_counter())

    args = GRPOConfig(
        output_dir=os.path.join(model_dir, "trl_out"),
        per_device_train_batch_size=len(prompts) * group,
        num_generations=group,
        max_completion_length=completion,
        generation_kwargs={"min_new_tokens": completion},
        max_steps=steps,
        learning_rate=1e-4,
        beta=0.0,
        num_iterations=1,
        temperature=1.0,
        report_to="none",
        use_cpu=True,
        logging_steps=10_000,
        save_strategy="no",
        dataloader_num_workers=0,
        bf16=False,
        gradient_checkpointing=False,  # TRL 1.16 defaults to True; agro-jax (remat none) and Tunix keep activations
        shuffle_dataset=False,
        disable_tqdm=True,
    )
    reward = lambda prompts, completions, **kw: [reward_text(c) for c in completions]
    ds = Dataset.from_dict({"prompt": prompts * (steps + 1)})
    trainer = GRPOTrainer(
        model=model_dir,
        reward_funcs=reward,
        args=args,
        train_dataset=ds,
        processing_class=tokenizer,
        callbacks=[Clock()],
    )
    trainer.train()
    return times, cpu, ends


def bench_tunix(python: str, model_dir: str, prompts, group: int, completion: int, steps: int) -> dict:
    """Tunix side in its venv: {"times": per-step s, "rollout_s": per-step rollout s, "completion_len": [min, max],
    ...} (see grpo_bench_tunix.py)."""
    spec = os.path.join(model_dir, "tunix_spec.json")
    with open(spec, "w") as f:
        json.dump({"model_dir": model_dir, "prompts": prompts, "group": group, "completion": completion,
                   "steps": steps, "lr": 1e-4}, f)  # fmt: skip
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpo_bench_tunix.py")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run([python, script, spec], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"Tunix side failed (rc {out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_agro(model_dir: str, tokenizer, prompts, group: int, completion: int, steps: int, config_spec: str):
    """agro-jax step: HF import -> sample (jitted) -> reward -> grpo.make_update_step.
    Returns (per-step seconds, per-step (sample s, reward + update s), per-step process CPU seconds)."""
    import jax
    import numpy as np

    from agro_jax.config import load_config
    from agro_jax.model.hf_io import load_hf_checkpoint
    from agro_jax.rl import grpo
    from agro_jax.scale.sharding import make_mesh, shard_batch
    from agro_jax.train import optim

    config = load_config(config_spec, ["--config.grpo.optim.learning_rate=1e-4", "--config.grpo.beta=0.0"])
    mesh = make_mesh(config.mesh)
    model, model_cfg = load_hf_checkpoint(model_dir, mesh=mesh, rules=config.mesh.rules)
    graphdef, params, rest = grpo.split_model(model)
    # Left-pad prompts to one length; repeat each G times.
    enc = [tokenizer(p)["input_ids"] for p in prompts]
    p_len = max(map(len, enc))
    prompt = np.full((len(enc), p_len), tokenizer.pad_token_id, np.int32)
    pvalid = np.zeros((len(enc), p_len), bool)
    for i, ids in enumerate(enc):
        prompt[i, p_len - len(ids) :], pvalid[i, p_len - len(ids) :] = ids, True
    prompt, pvalid = np.repeat(prompt, group, 0), np.repeat(pvalid, group, 0)
    n, t = prompt.shape[0], p_len + completion

    from agro_jax.rollout.sampler import Sampler

    # tokenizer=None: raw ids, no stop tokens, so every completion has exactly `completion` tokens (like TRL's
    # min_new_tokens); the jitted KV-cache sampler is the one the trainer's rollouts use.
    with config.unlocked():
        config.rollout.max_new_tokens_per_turn = completion
        config.rollout.temperature = 1.0
    sampler = Sampler(graphdef, rest, model_cfg, None, config.rollout)
    prompt_rows = [list(map(int, enc[i // group])) for i in range(n)]

    opt = optim.make_optimizer(config.grpo.optim)
    step_fn = grpo.make_update_step(graphdef, rest, opt, config.grpo)
    loss_mask = np.zeros((n, t), np.float32)
    loss_mask[:, p_len:] = 1.0
    valid = np.concatenate([pvalid, np.ones((n, completion), bool)], 1)
    times, split, cpu, ends = [], [], [], []
    with jax.set_mesh(mesh):
        # Inside the mesh, as train.train_loop does: an opt_state made outside it has unsharded scalar counts that
        # differ from the step's outputs, which would compile the update a second time at step 2.
        opt_state = opt.init(params)
        for s in range(steps):
            t0, c0 = time.perf_counter(), time.process_time()
            out = sampler.generate(params, prompt_rows, jax.random.key(s))
            t_sample = time.perf_counter() - t0
            tokens = np.concatenate([prompt, np.asarray(out.tokens, np.int32)], 1)
            logp = np.concatenate([np.zeros_like(prompt, np.float32), np.asarray(out.logps, np.float32)], 1)
            texts = tokenizer.batch_decode(tokens[:, p_len:])
            rewards = np.array([reward_text(x) for x in texts], np.float32)
            ro = argparse.Namespace(
                tokens_BxT=tokens,
                valid_BxT=valid,
                loss_mask_BxT=loss_mask,
                old_logp_BxT=logp,
                group_ids_B=np.repeat(np.arange(len(prompts)), group),
                rewards_B=rewards,
            )
            batch = grpo.make_batch(ro, config.grpo)
            params, opt_state, m = step_fn(params, opt_state, shard_batch(grpo.to_micro(batch.tree(), 1), mesh))
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            ends.append(time.perf_counter())
            split.append((t_sample, times[-1] - t_sample))
    return times, split, cpu, ends


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--completion", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=64, help="the random Qwen2's hidden size (MLP 3x, 4 heads)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--config", default="configs/tiny_cpu.py")
    # Tiny models run thousands of small torch ops per step; on a busy machine each 2-thread parallel region can wait
    # a scheduler quantum for a descheduled thread (TRL 4-16x slower), so 1 thread is the default, as in rollout_bench.
    ap.add_argument("--torch-threads", type=int, default=1, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument(
        "--tunix-python", default="/work/venvs/tunix/bin/python", help="python of the Tunix venv ('': skip)"
    )
    a = ap.parse_args(argv)
    d = tempfile.mkdtemp(prefix="grpo_bench_")
    tok = make_tiny_qwen2(d, a.hidden, a.layers)
    prompts = make_prompts(a.prompts)
    import torch

    if a.torch_threads:
        torch.set_num_threads(a.torch_threads)
    rows = []
    load0 = os.getloadavg()[0]
    agro, split, agro_cpu, agro_ends = bench_agro(d, tok, prompts, a.group, a.completion, a.steps, a.config)
    rows.append(("agro-jax (KV-cache Sampler + jitted update)", agro, agro_cpu, agro_ends))
    rows.append(("TRL GRPOTrainer (torch CPU)", *bench_trl(d, tok, prompts, a.group, a.completion, a.steps)))
    tunix = None
    if a.tunix_python:
        tunix = bench_tunix(a.tunix_python, d, prompts, a.group, a.completion, a.steps)
        rows.append(("Tunix GRPOLearner (JAX CPU, vanilla rollout)", tunix["times"], tunix["cpu_s"], tunix["ends"]))
    print(
        f"\nprompts={a.prompts} G={a.group} completion={a.completion} tokens, "
        f"tiny Qwen2 (hidden {a.hidden}, {a.layers} layers), "
        f"{a.steps} steps; first step (compile/warm-up) excluded from the median and min; "
        f"torch threads {torch.get_num_threads()}; load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after\n"
    )
    print("| trainer | first step s | median step s (steps 2..N) | min step s | completions/s (median) | "
          "agro-jax speedup (median / min) | median CPU s per step | median s between step ends |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    agro_med, agro_min = statistics.median(agro[1:]), min(agro[1:])
    for name, ts, cs, es in rows:
        med, gap = statistics.median(ts[1:]), statistics.median(b - e for e, b in zip(es, es[1:]))
        print(f"| {name} | {ts[0]:.2f} | {med:.3f} | {min(ts[1:]):.3f} | {a.prompts * a.group / med:.1f} | "
              f"{med / agro_med:.2f}x / {min(ts[1:]) / agro_min:.2f}x | {statistics.median(cs[1:]):.3f} | "
              f"{gap:.3f} |")  # fmt: skip
    sample_s, update_s = (statistics.median(x[i] for x in split[1:]) for i in (0, 1))
    print(f"\nagro-jax median split: sample {sample_s:.3f} s + reward/update {update_s:.3f} s")
    print(f"agro-jax first step (compiles): sample {split[0][0]:.2f} s + reward/update {split[0][1]:.2f} s")
    print("agro-jax per step s:", " ".join(f"{t:.3f}" for t in agro))
    print("TRL per step s:", " ".join(f"{t:.3f}" for t in rows[1][1]))
    if tunix is not None:
        roll = statistics.median(tunix["rollout_s"][1:])
        print(
            f"Tunix median split: rollout {roll:.3f} s + the rest {statistics.median(tunix['times'][1:]) - roll:.3f} s;"
            f" {tunix['train_steps']} train steps, completion tokens trained on {tunix['completion_len']} "
            f"(a sampled pad id is masked), prompt padded to {tunix['prompt_len']}"
        )
        print("Tunix per step s:", " ".join(f"{t:.3f}" for t in tunix["times"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
