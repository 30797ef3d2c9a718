"""Decode throughput: agro_jax Sampler (jitted KV cache, while_loop) vs transformers `generate` (PyTorch CPU).

Same random tiny Qwen3 weights (created with transformers, save_pretrained, loaded via agro_jax.model.hf_io), same
left-padded batch, same prompt/new lengths, greedy, no early stop on either side (every row makes exactly NEW tokens).
Also checks that both sides produce the same greedy tokens (float32) and the same logp for them (HF logits from an
extra untimed call). Compile time (first call minus steady call) is reported apart from the steady-state median.
Run: python benchmarks/rollout_bench.py
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import numpy as np
import torch
from flax import nnx
from ml_collections import ConfigDict

SIZES = {  # name: (hidden, intermediate, layers, heads, kv_heads, head_dim, vocab)
    "tiny": (64, 192, 2, 4, 2, 16, 1024),
    "small": (256, 768, 4, 8, 4, 32, 8192),
}


def make_hf_model(size: str, out_dir: str):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    h, i, layers, nh, kv, hd, v = SIZES[size]
    cfg = Qwen3Config(
        vocab_size=v,
        hidden_size=h,
        intermediate_size=i,
        num_hidden_layers=layers,
        num_attention_heads=nh,
        num_key_value_heads=kv,
        head_dim=hd,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg).eval()
    model.save_pretrained(out_dir)
    return model


def _timed(fn, repeats: int) -> tuple[float, float, object]:
    """(first call s, median steady call s, last output): the first call includes tracing/compilation (JAX) or
    warm-up allocation (torch); the median of the next `repeats` calls is the steady state."""
    t0 = time.perf_counter()
    out = fn(0)
    first = time.perf_counter() - t0
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        out = fn(r + 1)
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times)), out


def bench(size: str, batch: int, prompt_len: int, new: int, repeats: int, threads: int) -> dict:
    from agro_jax.model.hf_io import load_hf_checkpoint
    from agro_jax.rollout.sampler import Sampler

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as d:
        hf = make_hf_model(size, d)
        model, cfg = load_hf_checkpoint(d)
    vocab = SIZES[size][-1]
    rng = np.random.default_rng(0)
    lens = rng.integers(prompt_len // 2, prompt_len + 1, batch)  # ragged: left padding matters
    prompts = [rng.integers(1, vocab, n).tolist() for n in lens]

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rcfg = ConfigDict({"max_new_tokens_per_turn": new, "temperature": 0.0, "min_prompt_bucket": prompt_len})
    sampler = Sampler(graphdef, rest, cfg, None, rcfg)
    jax_first, jax_step, out = _timed(lambda r: sampler.generate(params, prompts, jax.random.key(r)), repeats)
    assert sampler.trace_count == 1 and all(len(t) == new for t in out.tokens)

    ids = torch.zeros((batch, prompt_len), dtype=torch.long)
    att = torch.zeros((batch, prompt_len), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, prompt_len - len(p) :], att[b, prompt_len - len(p) :] = torch.tensor(p), 1
    # the random config has no eos_token_id, so HF cannot stop early either: every row makes exactly `new` tokens
    kw = dict(attention_mask=att, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        hf_first, hf_step, _ = _timed(lambda r: hf.generate(ids, **kw), repeats)
        check = hf.generate(ids, **kw, return_dict_in_generate=True, output_logits=True)  # untimed
    hf_new = check.sequences[:, prompt_len:].numpy()
    hf_logp = torch.stack(check.logits, 1).float().log_softmax(-1).numpy()  # B x new x V
    jax_new = np.asarray(out.tokens)
    same = jax_new == hf_new
    # first disagreement per row (new if none); after it the two contexts differ, so later positions are not comparable
    first_diff = np.where(same.all(1), new, np.argmin(same, 1))
    logp_err = max(
        float(np.max(np.abs(np.asarray(out.logps[b])[:k] - hf_logp[b, np.arange(k), hf_new[b, :k]]), initial=0.0))
        for b, k in enumerate(first_diff)
    )
    n_tok = batch * new
    return {"size": size, "batch": batch, "prompt": prompt_len, "new": new,
            "jax_compile_s": jax_first - jax_step, "jax_step_s": jax_step, "jax_tok_s": n_tok / jax_step,
            "hf_first_s": hf_first, "hf_step_s": hf_step, "hf_tok_s": n_tok / hf_step, "speedup": hf_step / jax_step,
            "agree_pos": float(same.mean()), "agree_rows": int(same.all(1).sum()), "first_diff": first_diff.tolist(),
            "logp_err": logp_err}  # fmt: skip


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="tiny,small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt_len", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    # 1: on a shared 2-core box torch's 2 intra-op threads spin-wait on each other and run ~10x slower (measured).
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (XLA CPU uses all cores)")
    a = ap.parse_args()
    rows = [bench(s, a.batch, a.prompt_len, a.new, a.repeats, a.threads) for s in a.sizes.split(",")]
    print("| model | batch x prompt -> new | Sampler compile s | Sampler step s | Sampler tok/s | HF first s "
          "| HF step s | HF tok/s | speedup | greedy agree (pos / rows) | max abs logp diff |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['size']} | {r['batch']} x {r['prompt']} -> {r['new']} | {r['jax_compile_s']:.2f} "
              f"| {r['jax_step_s']:.3f} | {r['jax_tok_s']:.0f} | {r['hf_first_s']:.2f} | {r['hf_step_s']:.3f} "
              f"| {r['hf_tok_s']:.0f} | {r['speedup']:.2f}x | {r['agree_pos']:.3f} / {r['agree_rows']}/{r['batch']} "
              f"| {r['logp_err']:.1e} |")  # fmt: skip
        print(f"  {r['size']}: first greedy disagreement per row (== new: none): {r['first_diff']}")


if __name__ == "__main__":
    main()
