"""EX of Qwen2.5-Coder-0.5B-Instruct on a fixed Spider dev subset: the project's greedy agent vs transformers.

Subset: every k-th (--every) executable Spider dev example, counting from the first (executable: the database is
present and the gold SQL runs: 972 of 1034; wta_1's database is missing), in dev.json order, schema text as
`agro-sql eval --policy` renders it (sql/benchmark_data.load_spider). Settings: configs/qwen25_coder_05b.py:cpu
(float32; rollout: max_turns 3, max_prompt_len 2048, 512 new tokens per turn, max_total_len 4096) with
rollout.answer_format "tags_or_fence" (the instruct model answers in ```sql fences). The strict ("tags") answer is read
off the same rollouts: a turn without complete agent tags ends the episode in both formats, so only the last turn
differs: strict final SQL = the final SQL if the last turn answered in tags.
Both sides see the same batches (--batch examples, the subset sorted by prompt length, so a batch pads little) and the
same agent protocol (rollout/agent.py prompt, stop strings, observations from the same executor):
- agent: the `agro-sql eval --policy` path (eval/evaluate.py evaluate_checkpoint's pieces: train/stages.build_policy,
  rollout/loop.greedy_generate_fn, evaluate_policy), XLA on all cores;
- hf: transformers `generate` (torch, --threads, default all cores) driving the same turns (agent_drivers.host_loop),
  greedy, stopping on the token that completes a stop string.
Scored by the same evaluator (eval/evaluate.evaluate_predictions, mode spider). Tokens counted alike on both sides: the
generated tokens each conversation keeps (up to and including the stop; not prompt or observation tokens, not the
tokens a batch decodes for rows that already stopped). Wall time covers generation, execution of the agent's queries
and (agent) XLA compiles, reported apart (jax.monitoring backend-compile events); not model loading or scoring.
Run: python benchmarks/real_model_bench.py [--every 5] [--batch 16] [--sides agent,hf] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

SPIDER = pathlib.Path(__file__).resolve().parents[1].parent / "shared/benchmarks/spider"


def subset(spider_dir, every: int, executor) -> list[dict]:
    """Every `every`-th executable Spider dev example (dev.json order), each with its dev.json index."""
    from agro_jax.sql.benchmark_data import load_spider
    from agro_jax.sql.executor import Query

    examples = load_spider(str(spider_dir), "dev")
    ok = executor.run_many([Query(e["db_path"], e["sql"]) for e in examples])
    return [e for e, r in zip(examples, ok) if r.ok][::every]


def strict(final_sql, last_text) -> str | None:
    from agro_jax.rollout import agent

    if final_sql is None or last_text is None:
        return None
    return final_sql if agent.parse_action(last_text, "tags").kind == "answer" else None


def compile_timer() -> list:
    """A one-element list accumulating the seconds XLA spends compiling (jax.monitoring duration events)."""
    import jax

    total = [0.0]

    def on_event(event, duration, **kw):
        if event.endswith("backend_compile_duration"):
            total[0] += duration

    jax.monitoring.register_event_duration_secs_listener(on_event)
    return total


def run_agent(config, examples, executor, a) -> dict:
    import jax

    from agro_jax.eval.evaluate import evaluate_policy
    from agro_jax.rl.grpo import split_model
    from agro_jax.rollout.loop import greedy_generate_fn, slot_cap
    from agro_jax.rollout.sampler import Sampler
    from agro_jax.train.stages import build_policy, policy_tokenizer

    tok = policy_tokenizer(config, config.model.hf_path)
    mesh, model, mcfg = build_policy(config, len(tok), init_from=config.model.hf_path)
    graphdef, params, rest = split_model(model)
    sampler = Sampler(graphdef, rest, mcfg, tok, config.rollout)
    with config.rollout.unlocked():
        config.rollout.max_cache_tokens = a.batch * slot_cap(sampler, config.rollout)  # one chunk per batch
    compile_s = compile_timer()
    with jax.set_mesh(mesh):
        generate = greedy_generate_fn(sampler, params, executor, config.rollout, seed=int(config.seed))
        t0 = time.perf_counter()
        rep = evaluate_policy(examples, generate, executor, "spider", a.batch, answer_format="tags_or_fence")
        wall = time.perf_counter() - t0 - rep["elapsed_s"]  # minus the scoring (evaluate_predictions)
    tr = [row["transcript"] for row in rep["per_example"]]
    final = [row["pred"] for row in rep["per_example"]]
    texts = [[t["text"] for t in r["turns"]] for r in tr]
    return dict(final=final, strict=[strict(f, t[-1] if t else None) for f, t in zip(final, texts)],
                reasons=[r["finish_reason"] for r in tr], turn_texts=texts, wall_s=wall, compile_s=compile_s[0],
                generated=sum(int(r["generated_tokens"]) for r in tr),
                prompt_tokens=rep["agent"]["prompt_tokens"])  # fmt: skip


def run_hf(config, examples, executor, a) -> dict:
    import agent_drivers as drv
    import torch
    from transformers import AutoModelForCausalLM

    from agro_jax.rollout.loop import AgentProtocol
    from agro_jax.train.stages import policy_tokenizer

    torch.set_num_threads(a.threads or os.cpu_count())
    tok = policy_tokenizer(config, config.model.hf_path)
    model = AutoModelForCausalLM.from_pretrained(config.model.hf_path, dtype=torch.float32).eval()
    proto = AgentProtocol("tags_or_fence", int(config.rollout.observation_max_rows),
                          int(config.rollout.observation_max_chars))  # fmt: skip
    final, texts, reasons, generated, done_s = [], [], [], 0, 0.0
    if a.hf_json:  # keep the batches an earlier run of the same subset finished; run the rest
        old = json.loads(pathlib.Path(a.hf_json).read_text())["hf"]
        k = old["reasons"].index("not_run") if "not_run" in old["reasons"] else len(examples)
        assert k % a.batch == 0, f"--hf-json: {k} examples run, not whole batches of {a.batch}"
        final, texts, reasons = old["final"][:k], old["turn_texts"][:k], old["reasons"][:k]
        generated, done_s = old["generated"], old["wall_s"]
        print(f"hf: first {k} examples from {a.hf_json} ({done_s:.0f} s)")
    t0 = time.perf_counter() - done_s
    for s in range(len(final), len(examples), a.batch):
        if a.hf_budget_s and time.perf_counter() - t0 > a.hf_budget_s:  # the rest is left out (finish "not_run")
            n_left = len(examples) - s
            final, texts, reasons = final + [None] * n_left, texts + [[]] * n_left, reasons + ["not_run"] * n_left
            break
        out = drv.host_loop(drv.hf_generate(model, tok), tok, examples[s : s + a.batch], executor, config.rollout,
                            1, proto)  # fmt: skip
        final += out["final_sqls"]
        texts += out["turn_texts"]
        reasons += out["reasons"]
        generated += out["generated"]
        print(f"hf: {min(s + a.batch, len(examples))}/{len(examples)}, {time.perf_counter() - t0:.0f} s", flush=True)
    return dict(final=final, strict=[strict(f, t[-1] if t else None) for f, t in zip(final, texts)], reasons=reasons,
                turn_texts=texts, generated=generated, wall_s=time.perf_counter() - t0, compile_s=0.0)  # fmt: skip


def first_diff_turn(x: list, y: list) -> int | None:
    """The first turn whose text differs between two transcripts (None: identical)."""
    for t in range(max(len(x), len(y))):
        if t >= len(x) or t >= len(y) or x[t] != y[t]:
            return t
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16, help="examples per batch (both sides)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: all cores, as XLA uses)")
    ap.add_argument("--sides", default="agent,hf")
    ap.add_argument("--max-examples", type=int, default=0, help="only the first N of the subset (0: all)")
    ap.add_argument("--spider", default=str(SPIDER))
    ap.add_argument("--hf-budget-s", type=float, default=0, help="hf: start no batch after this many s (0: no "
                    "limit); those left out count as not run; the comparison covers those both ran")  # fmt: skip
    ap.add_argument("--agent-json", default="", help="take the agent side from this earlier --out of the same subset")
    ap.add_argument("--hf-json", default="", help="hf: keep the whole batches this earlier --out ran, run the rest "
                    "(wall time and tokens add up)")  # fmt: skip
    ap.add_argument("--out", default="", help="also write the per-example results and transcripts as JSON here")
    a = ap.parse_args()
    import agent_drivers as drv

    from agro_jax.config import load_config
    from agro_jax.eval.evaluate import evaluate_predictions
    from agro_jax.model.real_model import ensure_real_model
    from agro_jax.rollout import agent
    from agro_jax.sql.executor import Executor
    from agro_jax.train.stages import policy_tokenizer

    ensure_real_model()
    config = load_config("configs/qwen25_coder_05b.py:cpu", ["--config.rollout.answer_format=tags_or_fence"])
    res = {}
    with Executor.from_config(config.executor) as ex:
        examples = subset(a.spider, a.every, ex)[: a.max_examples or None]
        tok = policy_tokenizer(config, config.model.hf_path)
        lens = [len(agent.prompt_ids(tok, e["schema_text"], e["question"])) for e in examples]
        examples = [examples[i] for i in sorted(range(len(examples)), key=lambda i: lens[i])]
        n, dbs = len(examples), len({e["db_id"] for e in examples})
        print(f"{n} examples over {dbs} databases; prompt tokens median {sorted(lens)[n // 2]} max {max(lens)}")
        if a.agent_json:
            res["agent"] = json.loads(pathlib.Path(a.agent_json).read_text())["agent"]
            assert len(res["agent"]["final"]) == n, f"--agent-json: {len(res['agent']['final'])} examples, not {n}"
        for side in a.sides.split(","):
            r = (run_agent if side == "agent" else run_hf)(config, examples, ex, a)
            r["load"] = os.getloadavg()
            for fmt in ("strict", "final"):
                rep = evaluate_predictions(examples, r[fmt], ex, "spider")
                r[f"ex_{fmt}"], r[f"reasons_{fmt}"] = rep["num_correct"], rep["reasons"]
                r[f"matched_{fmt}"] = [row["matched"] for row in rep["per_example"]]
            res[side] = r
            if a.out:  # after each side, so a side's figures survive a stopped run
                pathlib.Path(a.out).write_text(json.dumps(res, default=str))
            rss = drv.peak_rss_gb()
            print(f"{side}: {r['wall_s']:.0f} s, EX {r['ex_final']}/{n}, peak RSS {rss:.2f} GB", flush=True)
    print(f"\n{n} Spider dev examples (every {a.every}th executable; {dbs} DBs), spider EX; load avg after each side")
    print("| side | EX strict tags | EX tags_or_fence | wall s (XLA compile) | generated tokens | tokens/s | finish "
          "reasons | load |\n|---|---:|---:|---:|---:|---:|---|---|")  # fmt: skip
    for side, r in res.items():
        load = " ".join(f"{x:.1f}" for x in r["load"])
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(collections.Counter(r["reasons"]).items()))
        print(f"| {side} | {r['ex_strict']}/{n} ({100 * r['ex_strict'] / n:.1f}%) | {r['ex_final']}/{n} "
              f"({100 * r['ex_final'] / n:.1f}%) | {r['wall_s']:.0f} ({r['compile_s']:.0f}) | {r['generated']} "
              f"| {r['generated'] / r['wall_s']:.1f} | {reasons} | {load} |")  # fmt: skip
    if len(res) == 2:
        ag, hf = res["agent"], res["hf"]
        ran = [i for i in range(n) if hf["reasons"][i] != "not_run"]
        if len(ran) < n:  # hf ran only the first len(ran) examples (shortest prompts): compare on those
            ex_ag, ex_hf = (sum(r["matched_final"][i] for i in ran) for r in (ag, hf))
            print(f"\nhf ran the first {len(ran)} of {n} (time budget); on those EX (tags_or_fence): agent {ex_ag}, "
                  f"hf {ex_hf}; below, agent tokens/s is over all {n}")  # fmt: skip
            ag, hf = ({k: [r[k][i] for i in ran] for k in ("final", "matched_final", "turn_texts")} | {
                k: r[k] for k in ("generated", "wall_s", "compile_s")} for r in (ag, hf))  # fmt: skip
            n = len(ran)
        same = sum(x == y for x, y in zip(ag["final"], hf["final"]))
        both = sum(x == y for x, y in zip(ag["matched_final"], hf["matched_final"]))
        no_compile = (ag["generated"] / (ag["wall_s"] - ag["compile_s"])) / (hf["generated"] / hf["wall_s"])
        diffs = [first_diff_turn(x, y) for x, y in zip(ag["turn_texts"], hf["turn_texts"])]
        print(f"\nfinal SQL (tags_or_fence) identical on {same}/{n}; EX outcome agrees on {both}/{n}; whole transcript "
              f"identical on {diffs.count(None)}/{n}, first differing turn: "
              f"{dict(collections.Counter(d for d in diffs if d is not None))}; agent vs hf tokens/s: "
              f"{(ag['generated'] / ag['wall_s']) / (hf['generated'] / hf['wall_s']):.2f}x "
              f"(without XLA compile time: {no_compile:.2f}x)")  # fmt: skip
    if a.out:
        meta = [dict(db_id=e["db_id"], question=e["question"], gold=e["sql"]) for e in examples]
        pathlib.Path(a.out).write_text(json.dumps(dict(examples=meta, **res), default=str))


if __name__ == "__main__":
    main()
