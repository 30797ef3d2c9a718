"""GRPO step time: agro-jax vs TRL GRPOTrainer on the same tiny Qwen2, prompts, group size and lengths (CPU).

One step = sample G completions for each prompt + reward + one optimizer update (beta=0, mu=1, no eval, no logging
sinks). Both sides load the same local HF checkpoint; completions are forced to the full length on both sides
(TRL: min_new_tokens; agro-jax: no stop token) so they do the same amount of work.

Run: python benchmarks/grpo_bench.py [--steps 10] [--prompts 8] [--group 4] [--completion 32] [--torch-threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
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

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

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
    return times


def bench_agro(model_dir: str, tokenizer, prompts, group: int, completion: int, steps: int, config_spec: str):
    """agro-jax step: HF import -> sample (jitted) -> reward -> grpo.make_update_step.
    Returns (per-step seconds, per-step (sample s, reward + update s))."""
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
    times, split = [], []
    with jax.set_mesh(mesh):
        # Inside the mesh, as train.train_loop does: an opt_state made outside it has unsharded scalar counts that
        # differ from the step's outputs, which would compile the update a second time at step 2.
        opt_state = opt.init(params)
        for s in range(steps):
            t0 = time.perf_counter()
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
            split.append((t_sample, times[-1] - t_sample))
    return times, split


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--completion", type=int, default=32)
    ap.add_argument("--config", default="configs/tiny_cpu.py")
    # Tiny models run thousands of small torch ops per step; on a busy machine each 2-thread parallel region can wait
    # a scheduler quantum for a descheduled thread (TRL 4-16x slower), so 1 thread is the default, as in rollout_bench.
    ap.add_argument("--torch-threads", type=int, default=1, help="torch.set_num_threads (0: torch's default)")
    a = ap.parse_args(argv)
    d = tempfile.mkdtemp(prefix="grpo_bench_")
    tok = make_tiny_qwen2(d)
    prompts = make_prompts(a.prompts)
    import torch

    if a.torch_threads:
        torch.set_num_threads(a.torch_threads)
    rows = []
    load0 = os.getloadavg()[0]
    agro, split = bench_agro(d, tok, prompts, a.group, a.completion, a.steps, a.config)
    rows.append(("agro-jax (KV-cache Sampler + jitted update)", agro))
    rows.append(("TRL GRPOTrainer (torch CPU)", bench_trl(d, tok, prompts, a.group, a.completion, a.steps)))
    print(
        f"\nprompts={a.prompts} G={a.group} completion={a.completion} tokens, tiny Qwen2 (hidden 64, 2 layers), "
        f"{a.steps} steps; first step (compile/warm-up) excluded from the median and min; "
        f"torch threads {torch.get_num_threads()}; load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after\n"
    )
    print("| trainer | first step s | median step s (steps 2..N) | min step s | completions/s (median) |")
    print("|---|---:|---:|---:|---:|")
    for name, ts in rows:
        med = statistics.median(ts[1:])
        print(f"| {name} | {ts[0]:.2f} | {med:.3f} | {min(ts[1:]):.3f} | {a.prompts * a.group / med:.1f} |")
    sample_s, update_s = (statistics.median(x[i] for x in split[1:]) for i in (0, 1))
    print(f"\nagro-jax median split: sample {sample_s:.3f} s + reward/update {update_s:.3f} s")
    print(f"agro-jax first step (compiles): sample {split[0][0]:.2f} s + reward/update {split[0][1]:.2f} s")
    print("agro-jax per step s:", " ".join(f"{t:.3f}" for t in agro))
    print("TRL per step s:", " ".join(f"{t:.3f}" for t in rows[1][1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
