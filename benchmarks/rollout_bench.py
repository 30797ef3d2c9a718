"""Decode throughput: agro_jax Sampler (jitted KV cache, while_loop) vs transformers `generate` (PyTorch CPU).

Same random tiny Qwen3 weights (created with transformers, save_pretrained, loaded via agro_jax.model.hf_io), same
left-padded batch, same prompt/new lengths, greedy, no early stop on either side (every row makes exactly NEW tokens).
Also checks that both sides produce the same greedy tokens (float32). Run: python benchmarks/rollout_bench.py
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


def bench(size: str, batch: int, prompt_len: int, new: int, repeats: int) -> dict:
    from agro_jax.model.hf_io import load_hf_checkpoint

    from agro_jax.sampler import Sampler

    torch.set_num_threads(2)
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
    out = sampler.generate(params, prompts, jax.random.key(0))  # compile
    t0 = time.perf_counter()
    for r in range(repeats):
        out = sampler.generate(params, prompts, jax.random.key(r))
    t_jax = (time.perf_counter() - t0) / repeats

    ids = torch.zeros((batch, prompt_len), dtype=torch.long)
    att = torch.zeros((batch, prompt_len), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, prompt_len - len(p) :], att[b, prompt_len - len(p) :] = torch.tensor(p), 1
    kw = dict(attention_mask=att, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        hf_out = hf.generate(ids, **kw)  # warmup
        t0 = time.perf_counter()
        for _ in range(repeats):
            hf_out = hf.generate(ids, **kw)
        t_hf = (time.perf_counter() - t0) / repeats
    hf_new = hf_out[:, prompt_len:].numpy()
    agree = float(np.mean([np.mean(np.asarray(o) == h) for o, h in zip(out.tokens, hf_new)]))
    n_tok = batch * new
    return {"size": size, "batch": batch, "prompt": prompt_len, "new": new, "jax_tok_s": n_tok / t_jax,
            "hf_tok_s": n_tok / t_hf, "speedup": t_hf / t_jax, "greedy_agree": agree}  # fmt: skip


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="tiny,small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt_len", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    rows = [bench(s, a.batch, a.prompt_len, a.new, a.repeats) for s in a.sizes.split(",")]
    print("| model | batch | prompt | new | agro_jax Sampler tok/s | HF generate tok/s | speedup | greedy agree |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['batch']} | {r['prompt']} | {r['new']} | {r['jax_tok_s']:.0f} | {r['hf_tok_s']:.0f} "
              f"| {r['speedup']:.2f}x | {r['greedy_agree']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
