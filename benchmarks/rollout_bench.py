"""Decode throughput: agro_jax Sampler (jitted KV cache, while_loop) vs transformers `generate` (PyTorch CPU).

Same random tiny Qwen3 weights (created with transformers, save_pretrained, loaded via agro_jax.model.hf_io), same
left-padded batch, same prompt/new lengths, greedy, no early stop on either side (every row makes exactly NEW tokens).
Also checks that both sides produce the same greedy tokens (float32) and the same logp for them (HF logits from an
extra untimed call). Compile time (first call minus steady call) is reported apart from the steady-state median.
Run: python benchmarks/rollout_bench.py

Real-model multi-turn case (`--real`): Qwen2.5-Coder-0.5B-Instruct float32 on CPU, 8 Spider dev prompts (REAL_DBS)
x G=4, greedy, up to 3 turns whose SQL the real executor runs (agent_drivers.ChatProtocol: the result comes back as a
user message), in one run, each engine in its own subprocess:
- new: the project's engine (rollout/loop.py run_rollouts: KV cache across turns, shared group prefill, compaction);
- old: the engine before issue 12 (`git show 2e7f7b0:agro_jax/rollout/sampler.py` into a scratch module, driven by
  agent_drivers.host_loop: every turn re-prefills every conversation, G prefills per prompt, host-side multi-token
  stops), with its model_fn set to last-position logits (as data_factory/model_loop.py used it): the plain old
  engine holds B x P x V float32 logits (32 x 1024 x 151,936 x 4 B = 20 GB here), beyond this machine;
- hf: transformers `generate` (torch, --threads) driving the same conversations through host_loop.
tokens/s = generated (agent) tokens / rollout wall time. Engines in --warm (default: new) are timed on a second
rollout in the same process (every program compiled); the others on their one rollout minus its tracing/compile time
(jax.monitoring '/jax/core/compile/*' events; new's cold-minus-compile is printed too, to check that subtraction).
Peak RSS: the process's high-water mark during the rollouts, counted from just before them (reset_peak_rss), so the
weight loader's transient is not in it; it includes the resident weights. Greedy tokens are compared row by row.
Per-engine JSON stays in --keep; `--table-only` reprints the table from it.
Run: python benchmarks/rollout_bench.py --real
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import pathlib
import sys
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
    assert sampler.traces == {"prefill": 1, "decode": 1} and all(len(t) == new for t in out.tokens)

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


OLD_COMMIT = "2e7f7b0"  # the last commit before the issue-12 engine
SPIDER = "../shared/benchmarks/spider"


# The first dev example of the 8 databases with the shortest prompts (386-498 Qwen tokens): the old engine and
# transformers re-prefill 32 whole conversations every turn, which at Spider's median prompt (664) would take hours.
REAL_DBS = ("network_1", "singer", "course_teach", "poker_player", "flight_2", "voter_1", "museum_visit", "pets_1")


def real_examples(spider_dir: str, n: int = len(REAL_DBS)) -> list[dict]:
    from agro_jax.sql.benchmark_data import load_spider

    spider = load_spider(spider_dir, "dev")
    return [next(e for e in spider if e["db_id"] == db) for db in REAL_DBS[:n]]


def real_engine(engine: str, out_path: str, a) -> None:
    """One engine's multi-turn rollouts (subprocess body): writes tokens, timings and peak RSS as JSON."""
    import importlib.util
    import json
    import subprocess

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    import agent_drivers as drv

    from agro_jax.model.real_model import ensure_real_model
    from agro_jax.model.tokenizer import load_tokenizer
    from agro_jax.sql.executor import Executor

    hf_dir = str(ensure_real_model())
    tok = load_tokenizer(hf_dir)
    cfg = ConfigDict(dict(max_turns=3, max_prompt_len=2048, max_new_tokens_per_turn=a.new, max_total_len=2048,
                          temperature=0.0, top_p=1.0, top_k=0, observation_max_rows=5, observation_max_chars=300,
                          min_prompt_bucket=256, answer_format="tags_or_fence", max_cache_tokens=0,
                          max_prefill_tokens=8192))  # fmt: skip
    examples = real_examples(a.spider, a.prompts)
    proto = drv.ChatProtocol(int(cfg.max_turns))
    res = {"engine": engine}
    with Executor(num_workers=2) as ex:
        if engine == "hf":
            import torch
            from transformers import AutoModelForCausalLM

            torch.set_num_threads(a.threads)
            model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
            res["load_rss_gb"] = drv.peak_rss_gb()
            gc.collect()
            res["base_rss_gb"] = drv.rss_gb()
            drv.reset_peak_rss()
            t0 = time.perf_counter()
            out = drv.host_loop(drv.hf_generate(model, tok), tok, examples, ex, cfg, a.group, proto)
            res.update(warm_s=time.perf_counter() - t0, cold_s=None)  # no compile: its one run is the figure
        else:
            from agro_jax.model.hf_io import load_hf_checkpoint

            model, mcfg = load_hf_checkpoint(hf_dir, dtype="float32", param_dtype="float32")
            graphdef, params, rest = nnx.split(model, nnx.Param, ...)
            res["load_rss_gb"] = drv.peak_rss_gb()
            if engine == "new":
                from agro_jax.rollout.loop import run_rollouts
                from agro_jax.rollout.sampler import Sampler

                sampler = Sampler(graphdef, rest, mcfg, tok, cfg)

                def run():
                    ro = run_rollouts(sampler, params, examples, ex, cfg, group_size=a.group, rng=jax.random.key(0),
                                      greedy=True, protocol=proto)  # fmt: skip
                    k = ro.valid_BxT.sum(1)
                    return dict(tokens=[ro.tokens_BxT[b, : k[b]].tolist() for b in range(len(k))],
                                reasons=ro.finish_reasons, generated=int(ro.loss_mask_BxT.sum()),
                                turns=ro.num_turns_B.tolist(),
                                stats={k: v for k, v in ro.stats.items() if k != "layouts"})  # fmt: skip
            else:
                src = subprocess.run(["git", "show", f"{OLD_COMMIT}:agro_jax/rollout/sampler.py"], check=True,
                                     capture_output=True, text=True).stdout  # fmt: skip
                scratch = pathlib.Path(out_path).with_suffix(".old_sampler.py")
                scratch.write_text(src)
                spec = importlib.util.spec_from_file_location("old_sampler", scratch)
                old = sys.modules["old_sampler"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
                spec.loader.exec_module(old)

                def last_logits(params, tokens, positions, mask, cache, cache_index):
                    m = nnx.merge(graphdef, params, rest)
                    hidden, cache = m.hidden(tokens, positions, mask, cache, cache_index)
                    return m.logits(hidden[:, -1:]), cache

                def init_cache(batch, max_len):
                    from agro_jax.model.kv_cache import KVCache

                    return KVCache.init(mcfg, batch, max_len, mcfg.dtype)

                sampler = old.Sampler(graphdef, rest, mcfg, tok, cfg, model_fn=last_logits, init_cache=init_cache)

                def run():
                    return drv.host_loop(drv.sampler_generate(sampler, params), tok, examples, ex, cfg, a.group, proto)

            compile_s = [0.0]  # tracing + lowering + XLA compile, summed from jax.monitoring events

            def on_event(event, duration, **kw):
                if event.startswith("/jax/core/compile"):
                    compile_s[0] += duration

            jax.monitoring.register_event_duration_secs_listener(on_event)
            gc.collect()
            res["base_rss_gb"] = drv.rss_gb()
            drv.reset_peak_rss()
            t0 = time.perf_counter()
            out = run()
            cold = time.perf_counter() - t0
            res.update(cold_s=cold, compile_s=compile_s[0])
            res["warm_s"] = res["cold_minus_compile_s"] = cold - compile_s[0]
            if engine in a.warm.split(","):  # the figure: a second, warm rollout (every program already compiled)
                t0 = time.perf_counter()
                warm_out = run()
                res.update(warm_s=time.perf_counter() - t0, warm_compile_s=compile_s[0] - res["compile_s"],
                           warm_same=warm_out["tokens"] == out["tokens"])  # fmt: skip
    turns = out.get("turns") or [len(t) for t in out["turn_texts"]]
    res.update(tokens=out["tokens"], reasons=out["reasons"], generated=out["generated"], stats=out.get("stats"),
               turns=dict(collections.Counter(turns)),
               peak_rss_gb=drv.peak_rss_gb(), load=os.getloadavg())  # fmt: skip
    pathlib.Path(out_path).write_text(json.dumps(res))


def real_bench(a) -> None:
    """The engines one after the other (subprocesses; each writes <keep>/<engine>.json), then the table."""
    import json
    import subprocess

    pathlib.Path(a.keep).mkdir(parents=True, exist_ok=True)
    if not a.table_only:
        for engine in a.engines.split(","):
            out = os.path.join(a.keep, f"{engine}.json")
            cmd = [sys.executable, __file__, "--real-engine", engine, "--out", out, "--new", str(a.new),
                   "--group", str(a.group), "--prompts", str(a.prompts), "--threads", str(a.threads),
                   "--spider", a.spider, "--warm", a.warm]  # fmt: skip
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True)
            print(f"{engine}: done in {time.perf_counter() - t0:.0f} s, load {os.getloadavg()}", flush=True)
    rows = {}
    for engine in a.engines.split(","):
        f = pathlib.Path(a.keep) / f"{engine}.json"
        if f.exists():
            rows[engine] = json.loads(f.read_text())
    ref = rows.get("new")
    print("| engine | generated tokens | wall s | tokens/s | new's speedup | cold wall s (compile s) | peak RSS GB "
          "| RSS before GB | same tokens as new (rows) | load avg at end |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for name, r in rows.items():
        same = "-" if ref is None else f"{sum(x == y for x, y in zip(r['tokens'], ref['tokens']))}/{len(r['tokens'])}"
        cold = f"{r['cold_s']:.0f} ({r['compile_s']:.0f})" if r.get("cold_s") else "-"
        tps = r["generated"] / r["warm_s"]
        speedup = "-" if ref is None else f"{ref['generated'] / ref['warm_s'] / tps:.2f}x"
        print(
            f"| {name} | {r['generated']} | {r['warm_s']:.1f} | {tps:.1f} | {speedup} | {cold} "
            f"| {r['peak_rss_gb']:.2f} | {r['base_rss_gb']:.2f} | {same} | {' '.join(f'{x:.1f}' for x in r['load'])} |"
        )
    for name, r in rows.items():
        print(f"  {name}: reasons {dict(collections.Counter(r['reasons']))}; turns {r.get('turns')}; stats "
              f"{r.get('stats')}; cold minus compile {r.get('cold_minus_compile_s')} s; warm run same tokens "
              f"{r.get('warm_same')}, compile in it {r.get('warm_compile_s')} s")  # fmt: skip
        if ref is not None and name != "new":
            for b, (x, y) in enumerate(zip(r["tokens"], ref["tokens"])):
                if x != y:
                    k = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
                    print(f"    row {b}: first difference at token {k} of {len(y)} (prompt + turns)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", action="store_true", help="the real-model multi-turn case (new vs old vs hf)")
    ap.add_argument("--engines", default="new,old,hf")
    ap.add_argument("--real-engine", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument(
        "--warm",
        default="new",
        help="real case: engines timed on a second, warm rollout (others: their one run minus its compile time)",
    )
    ap.add_argument("--keep", default="runs/rollout_bench_real", help="real case: per-engine JSON results")
    ap.add_argument("--table-only", action="store_true", help="real case: print the table from --keep's JSON")
    ap.add_argument("--prompts", type=int, default=len(REAL_DBS), help="real case: how many of REAL_DBS' examples")
    ap.add_argument("--spider", default=str(pathlib.Path(__file__).resolve().parents[1] / SPIDER))
    ap.add_argument("--sizes", default="tiny,small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt_len", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    # 1: on a shared 2-core box torch's 2 intra-op threads spin-wait on each other and run ~10x slower (measured).
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (XLA CPU uses all cores)")
    a = ap.parse_args()
    if a.real_engine:
        return real_engine(a.real_engine, a.out, a)
    if a.real:
        return real_bench(a)
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
