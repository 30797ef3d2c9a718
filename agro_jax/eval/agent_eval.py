"""Greedy agent evaluation with both answer formats and the agent-level numbers of a run (the pipeline's eval stages).

    examples = spider_subset(spider_dir, every=20, executor=ex)       # a fixed, documented Spider dev subset
    agent = GreedyAgent(config, policy, tokenizer)                    # loaded on first use, kept for several sets
    report = evaluate_agent(config, examples, agent, tokenizer, "spider", partial="eval/.partial/x.jsonl")
    records = generate_records(config, held_out + spider, agent)      # several sets in shared batches, then
    report = score_records(config, spider, records[len(held_out):], "spider")   # each scored on its own

One greedy rollout per example, under rollout.answer_format "tags_or_fence"; the strict result ("tags", what the
training reward accepts) is read off the same rollout: the two formats differ only on a turn without complete agent
tags, which ends the episode either way (strict: invalid, no answer; tags_or_fence: the last ```sql block answers), so
every earlier turn is the same and strict final SQL = the final SQL when the last turn answers in tags, else None.
Both are scored by execution. The report is evaluate.evaluate_policy's of the strict answers (`ex`, `reasons`,
`by_difficulty`, `per_example` with each example's `transcript`: turns, observations, finish reason, token counts) plus
  tags_or_fence: {ex, num_correct, reasons, by_difficulty}      the same rollouts, fenced answers accepted
  agent: + agent_stats(...)                                      turns used, well-formed turns, exploration errors
and per example the tags-or-fence prediction and outcome.
`partial`: records of finished batches are appended there, so a killed evaluation resumes at its next batch (the
caller removes it once the report is written).
"""

from __future__ import annotations

import collections
import copy
import json
import os
import pathlib

from agro_jax.rollout import agent


def spider_subset(spider_dir, every: int, executor, split: str = "dev", compact: bool = True, sample_values: int = 3):
    """Every `every`-th executable example of a Spider split, in file order from the first: executable = its database
    exists and its gold SQL runs without error (972 of Spider dev's 1034: wta_1's database is missing from the shared
    copy; every present gold runs). Schema text rendered like the factory's (compact / sample_values), so the prompts
    of the cold start and of this evaluation have one format."""
    from agro_jax.sql.benchmark_data import load_spider
    from agro_jax.sql.executor import Query
    from agro_jax.sql.schema import render_schema

    if every < 1:
        raise ValueError(f"eval.spider_every={every} must be >= 1")
    examples = load_spider(str(spider_dir), split, schema_text=False)
    results = executor.run_many([Query(e["db_path"], e["sql"]) for e in examples], use_cache=True)
    picked = [e for e, r in zip(examples, results) if r.ok][::every]
    schemas: dict[str, str] = {}
    for e in picked:
        if e["db_path"] not in schemas:
            schemas[e["db_path"]] = render_schema(e["db_path"], sample_values, compact=compact)
        e["schema_text"] = schemas[e["db_path"]]
    return picked


def strict_sql(record: dict) -> str | None:
    """The record's final SQL if its last turn answered in agent tags (strict protocol), else None."""
    turns = record.get("turns") or []
    if record.get("final_sql") is None or not turns:
        return None
    return record["final_sql"] if agent.parse_action(turns[-1]["text"], "tags").kind == "answer" else None


def well_formed(turn: dict) -> bool:
    """A turn that ended on a stop (not its token budget) and parses as <sql> or <answer> under the strict tags."""
    return turn.get("stop") != "budget" and agent.parse_action(turn["text"], "tags").kind != "invalid"


def error_observation(turn: dict) -> bool:
    """An exploration turn whose observation is an error (agent.format_observation writes `Error (kind): ...`)."""
    return str(turn.get("observation", "")).startswith("Error")


def agent_stats(records: list[dict], strict_rows: list[dict]) -> dict:
    """Turns used, the rate of well-formed agent turns, and what followed an exploration query's error: of the
    episodes where an exploration <sql> got an error observation, how many then answered with SQL that executes and
    how many answered correctly (strict). strict_rows: evaluate_predictions' per_example rows of the strict answers."""
    turns = [t for r in records for t in r["turns"]]
    errored = [i for i, r in enumerate(records) if any(error_observation(t) for t in r["turns"])]
    executes = ("match", "mismatch")
    explored = sum(any("observation" in t for t in r["turns"]) for r in records)
    return dict(
        turns_hist={str(k): v for k, v in sorted(collections.Counter(r["num_turns"] for r in records).items())},
        mean_turns=sum(r["num_turns"] for r in records) / max(1, len(records)),
        turns=len(turns),
        well_formed_turns=sum(well_formed(t) for t in turns),
        well_formed_rate=sum(well_formed(t) for t in turns) / max(1, len(turns)),
        explored=explored,
        exploration_queries=sum("observation" in t for t in turns),
        exploration_errors=sum(error_observation(t) for t in turns),
        error_episodes=len(errored),
        error_then_executes=sum(strict_rows[i]["reason"] in executes for i in errored),
        error_then_correct=sum(bool(strict_rows[i]["matched"]) for i in errored),
        finish_reasons_tags_or_fence=dict(collections.Counter(r["finish_reason"] for r in records)),
        generated_tokens=sum(int(r.get("generated_tokens", 0)) for r in records),
    )


def policy_id(policy) -> str:
    """Which weights made a partial file's records: the policy's path and, for a checkpoints dir, its step dirs with
    their modification times, so the records of a stage trained again (--force) are not reused."""
    if isinstance(policy, (list, tuple)):  # a chain of checkpoints (train/stages.py build_policy)
        return "+".join(policy_id(x) for x in policy)
    p = pathlib.Path(policy).absolute()
    steps = sorted((c for c in p.iterdir() if c.name.isdigit()), key=lambda c: int(c.name)) if p.is_dir() else []
    return ",".join([str(p), *(f"{c.name}@{c.stat().st_mtime_ns}" for c in steps)])


def _load_partial(path, examples, policy: str) -> dict[int, dict]:
    """Records of an earlier, killed evaluation of the same examples (index and question match) by the same policy."""
    done = {}
    if path and os.path.isfile(path):
        for line in pathlib.Path(path).read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill: that batch runs again
                continue
            i = int(row["index"])
            if i < len(examples) and row.get("question") == examples[i]["question"] and row.get("policy") == policy:
                done[i] = row["record"]
    return done


class GreedyAgent:
    """A policy (a checkpoints dir, step dir or HF dir) loaded on first use and kept for several example sets: greedy
    rollouts under rollout.answer_format "tags_or_fence" (rollout.loop.greedy_generate_fn's records). One load and
    one set of sampler programs serve an eval stage's held-out split and Spider subset."""

    def __init__(self, config, policy, tokenizer):
        self.config, self.policy, self.tokenizer = config, policy, tokenizer
        self.id = policy_id(policy)
        self._loaded = None

    def _load(self):
        from agro_jax.rl.grpo import split_model
        from agro_jax.rollout.sampler import Sampler
        from agro_jax.train.stages import build_policy

        rollout_cfg = copy.deepcopy(self.config.rollout)
        with rollout_cfg.unlocked():
            rollout_cfg.answer_format = "tags_or_fence"
        vocab = int(self.config.model.vocab_size) or len(self.tokenizer)
        mesh, model, model_cfg = build_policy(self.config, vocab, init_from=self.policy)
        graphdef, params, rest = split_model(model)
        return mesh, Sampler(graphdef, rest, model_cfg, self.tokenizer, rollout_cfg), params, rollout_cfg

    def generate(self, examples, executor) -> list[dict]:
        import jax

        from agro_jax.rollout.loop import greedy_generate_fn

        if self._loaded is None:
            self._loaded = self._load()
        mesh, sampler, params, rollout_cfg = self._loaded
        with jax.set_mesh(mesh):
            return greedy_generate_fn(sampler, params, executor, rollout_cfg, seed=int(self.config.seed))(examples)


def generate_records(config, examples, agent_or_policy, tokenizer=None, partial=None, log=print) -> list[dict]:
    """One record per example, in batches of eval.batch_size; `partial` keeps finished batches (see the module doc).
    agent_or_policy: a GreedyAgent or a policy path (then loaded here with `tokenizer`)."""
    from agro_jax.sql.executor import Executor

    policy = agent_or_policy
    policy = policy if isinstance(policy, GreedyAgent) else GreedyAgent(config, policy, tokenizer)
    done = _load_partial(partial, examples, policy.id)
    todo = [i for i in range(len(examples)) if i not in done]
    if done:
        log(f"[eval] {len(done)} of {len(examples)} examples done earlier ({partial})")
    if todo:
        bs = int(config.eval.batch_size)
        if partial:
            os.makedirs(os.path.dirname(partial), exist_ok=True)
        with Executor.from_config(config.executor) as ex:
            for start in range(0, len(todo), bs):
                idx = todo[start : start + bs]
                out = policy.generate([examples[i] for i in idx], ex)
                done.update(zip(idx, out))
                if partial:
                    with open(partial, "a") as f:
                        for i, r in zip(idx, out):
                            row = {"index": i, "question": examples[i]["question"], "policy": policy.id, "record": r}
                            f.write(json.dumps(row) + "\n")
                log(f"[eval] {len(done)}/{len(examples)} examples")
    return [done[i] for i in range(len(examples))]


def strict_record(record: dict) -> dict:
    """The record as the strict protocol would have ended it: a last turn without agent tags is invalid (no answer)."""
    sql = strict_sql(record)
    if sql is None and record.get("final_sql") is not None:
        return dict(record, final_sql=None, finish_reason="invalid")
    return record


def evaluate_agent(config, examples, policy, tokenizer, mode: str, partial=None, log=print) -> dict:
    """EX (strict and tags_or_fence) + agent stats + transcripts of `policy`'s greedy agent on `examples` (see
    score_records). policy: a GreedyAgent (shared by several calls) or a policy path."""
    return score_records(config, examples, generate_records(config, examples, policy, tokenizer, partial, log), mode)


def score_records(config, examples, records: list[dict], mode: str) -> dict:
    """The report of evaluate.evaluate_policy for the strict answers of `records` (generate_records' of `examples`;
    per example its `transcript`), with `tags_or_fence` and the agent_stats merged into its `agent` summary."""
    from agro_jax.eval.evaluate import evaluate_policy, evaluate_predictions
    from agro_jax.sql.executor import Executor

    strict = iter([strict_record(r) for r in records])
    with Executor.from_config(config.executor) as ex:
        report = evaluate_policy(examples, lambda batch: [next(strict) for _ in batch], ex, mode, answer_format="tags")
        loose = evaluate_predictions(examples, [r["final_sql"] for r in records], ex, mode)
    report["tags_or_fence"] = {k: loose[k] for k in ("ex", "num_correct", "reasons", "by_difficulty")}
    report.setdefault("agent", {}).update(agent_stats(records, report["per_example"]))
    for row, fence_row, rec in zip(report["per_example"], loose["per_example"], records):
        row.update(pred_tags_or_fence=fence_row["pred"], matched_tags_or_fence=fence_row["matched"],
                   reason_tags_or_fence=fence_row["reason"],
                   finish_reason_tags_or_fence=rec["finish_reason"])  # fmt: skip
    return report
