"""`agro-sql run`: the whole AGRO-SQL pipeline in one command, stage by stage, each resumable from its outputs.

    factory -> tokenizer -> eval_base -> sft -> eval_sft -> grpo -> eval_grpo -> report

Run folder (<workdir>):
    factory/{databases/, examples.jsonl, summary.json, summary.md, tfds/}   verified synthetic data (TFDS ArrayRecord)
    tokenizer/                      byte-level BPE trained on the train split (skipped if config.tokenizer.path is set)
    sft/, grpo/                     checkpoints/, metrics.jsonl, tb/, hf/ (see agro_jax/train/stages.py)
    eval/{base,sft,grpo}.{json,md}  EX on the held-out split with the greedy agent (agro_jax/eval/agent_eval.py:
                                    strict tags and tags-or-fence EX, turns, exploration errors, transcripts)
    eval/spider/{base,sft,grpo}.*   the same on a fixed Spider subset (config eval.spider_dir, every
                                    eval.spider_every-th executable example; off when spider_dir is "")
    report/report.md + PNGs         agro_jax/eval/report.py
    stages.json                     finished stages with their outputs, wall and CPU seconds and load average

eval_base evaluates the pretrained policy (config.model.hf_path) before any training; it runs when config.eval.base
is set (a from-scratch model has nothing to evaluate before training). Eval stages keep finished batches in
eval/.partial/, so a killed evaluation resumes at its next batch. Evaluation and GRPO's init_from read a stage's
checkpoints dir, not a step dir: a damaged latest step falls back to the newest intact one.

A stage is skipped when its marker is in stages.json and its outputs still exist; training stages killed midway
resume from their own latest checkpoint. `--stages sft,eval_sft` runs a subset; `--force` reruns the named stages
(training stages still resume from their checkpoints: delete <workdir>/<stage> to train again from scratch).
"""

from __future__ import annotations

import json
import os
import pathlib
import time

STAGES = ("factory", "tokenizer", "eval_base", "sft", "eval_sft", "grpo", "eval_grpo", "report")


def stage_error(stages) -> str | None:
    unknown = [s for s in stages if s not in STAGES]
    return f"unknown stage(s) {unknown}; stages are {', '.join(STAGES)}" if unknown else None


class Pipeline:
    def __init__(self, config, workdir=None, log=print):
        self.config = config
        self.workdir = pathlib.Path(workdir or config.workdir).absolute()
        self.log = log
        self._state_path = self.workdir / "stages.json"
        self.state = json.loads(self._state_path.read_text()) if self._state_path.is_file() else {}
        self._tokenizer = None
        with config.unlocked():  # later stages read the factory's dataset unless the config names another one
            if not config.data.data_dir:
                config.data.data_dir = str(self.workdir / "factory" / "tfds")
            if config.model.get("hf_path") and not config.tokenizer.path:
                config.tokenizer.path = config.model.hf_path  # a pretrained policy keeps its own tokenizer

    # ----------------------------------------------------------------------------------------------- bookkeeping

    def _done(self, stage: str) -> bool:
        rec = self.state.get(stage)
        return bool(rec) and all(pathlib.Path(p).exists() for p in rec.get("outputs", []))

    def _mark(self, stage: str, outputs: list, seconds: float, **extra) -> None:
        self.state[stage] = {"outputs": [str(p) for p in outputs], "seconds": round(seconds, 2), **extra}
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        os.replace(tmp, self._state_path)  # atomic: a kill never leaves a half-written marker file

    def run(self, stages=STAGES, force: bool = False) -> dict:
        if stage_error(stages):
            raise ValueError(stage_error(stages))
        self.workdir.mkdir(parents=True, exist_ok=True)
        t_all = time.perf_counter()
        for stage in STAGES:
            if stage not in stages:
                continue
            if self._done(stage) and not force:
                self.log(f"[run] {stage}: done earlier ({self.state[stage]['seconds']} s), skipping")
                continue
            self.log(f"[run] === {stage} ===")
            t0, c0 = time.perf_counter(), time.process_time()
            outputs, extra = getattr(self, f"stage_{stage}")()
            # CPU seconds of this process (all threads; not the executor workers) beside the wall time: on a shared
            # machine the wall time grows with the load average, which is recorded at the stage's end
            cpu, load = round(time.process_time() - c0, 1), [round(x, 2) for x in os.getloadavg()]
            self._mark(stage, outputs, time.perf_counter() - t0, cpu_s=cpu, load=load, **extra)
            self.log(f"[run] {stage}: {time.perf_counter() - t0:.1f} s (CPU {cpu} s, load {load[0]})")
        self.log(f"[run] finished in {time.perf_counter() - t_all:.1f} s; report: {self.workdir / 'report/report.md'}")
        return self.state

    # ---------------------------------------------------------------------------------------------------- stages

    def stage_factory(self):
        from agro_jax.sql.executor import Executor
        from data_factory.pipeline import run_factory, write_outputs

        out = self.workdir / "factory"
        with Executor.from_config(self.config.executor) as ex:
            records, summary = run_factory(self.config.factory, ex, str(out), seed=int(self.config.seed))
        tfds_path = write_outputs(records, summary, str(out), build_tfds=True)
        self.log(f"[run] factory: {len(records)} examples, TFDS dataset at {tfds_path}")
        return [out / "summary.json", tfds_path], {"examples": len(records)}

    def stage_tokenizer(self):
        from agro_jax.data.loader import load_examples
        from agro_jax.model.tokenizer import train_tokenizer
        from agro_jax.rollout import agent
        from agro_jax.train import sft

        examples = load_examples(self.config.data.data_dir, self.config.data.train_split)
        if self.config.tokenizer.path:
            self.log(f"[run] tokenizer: using {self.config.tokenizer.path}")
            out, tok = self.config.tokenizer.path, self.tokenizer()
        else:
            # Everything the policy reads or writes: prompt, schemas, questions, gold reasoning and SQL.
            texts = [agent.SYSTEM_PROMPT]
            for e in examples:
                texts += [e["schema_text"], e["question"], e["sql"], sft.gold_reasoning(e)]
            out = self.workdir / "tokenizer" / "tokenizer.json"
            tok = train_tokenizer(texts, int(self.config.tokenizer.vocab_size), str(out.parent), agent.AGENT_TAGS)
            self._tokenizer = tok
        self._check_prompt_lengths(tok, examples)
        return [out], {"vocab_size": len(tok)}

    def _check_prompt_lengths(self, tok, examples) -> None:
        from agro_jax.rollout import agent

        lens = sorted(len(agent.prompt_ids(tok, e["schema_text"], e["question"], e["evidence"])) for e in examples)
        limit = int(self.config.rollout.max_prompt_len)
        over = sum(n > limit for n in lens)
        self.log(f"[run] prompt tokens: median {lens[len(lens) // 2]}, max {lens[-1]}; limit {limit}")
        if over:
            self.log(f"[run] WARNING {over}/{len(lens)} prompts exceed rollout.max_prompt_len={limit}: rollouts skip "
                     "them (finish reason prompt_too_long, no answer)")  # fmt: skip

    def tokenizer(self):
        if self._tokenizer is None:
            from agro_jax.train.stages import resolve_tokenizer

            self._tokenizer = resolve_tokenizer(self.config, self.workdir)
        return self._tokenizer

    def stage_sft(self):
        from agro_jax.train.stages import run_sft

        final = run_sft(self.config, self.workdir, tokenizer=self.tokenizer())
        return [final], {"checkpoint": str(final)}

    def stage_grpo(self):
        from agro_jax.train.stages import run_grpo

        init = self._checkpoints("sft")
        final = run_grpo(self.config, self.workdir, init_from=init, tokenizer=self.tokenizer())
        return [final], {"checkpoint": str(final), "init_from": str(init)}

    def stage_eval_base(self):
        if not self.config.eval.get("base", False):
            self.log("[run] eval_base: off (config.eval.base)")
            return [], {"skipped": "config.eval.base is off"}
        if not self.config.model.get("hf_path"):
            raise ValueError("eval_base needs a pretrained policy: config.model.hf_path is empty")
        return self._evaluate("base")

    def stage_eval_sft(self):
        return self._evaluate("sft")

    def stage_eval_grpo(self):
        return self._evaluate("grpo")

    def stage_report(self):
        from agro_jax.eval.report import write_report

        path = write_report(self.workdir)
        return [path], {}

    # --------------------------------------------------------------------------------------------------- helpers

    def _checkpoints(self, stage: str) -> pathlib.Path:
        """<workdir>/<stage>/checkpoints, the directory and not one step of it: evaluation and GRPO's init_from load
        its newest intact step, so a damaged latest step falls back to the one before (with a warning line naming
        the file; agro_jax/train/checkpoint.py load_params) where a step dir would be an error."""
        d = self.workdir / stage / "checkpoints"
        if not d.is_dir() or not any(p.name.isdigit() for p in d.iterdir()):
            raise FileNotFoundError(f"no {stage} checkpoint under {self.workdir / stage}; run the {stage} stage first")
        return d

    def _evaluate(self, stage: str):
        """Greedy multi-turn agent on the held-out split (eval/<stage>.json), each of eval.extra_splits the dataset
        has (eval/<split>/<stage>.json) and the Spider subset when eval.spider_dir is set (eval/spider/), scored by
        execution (EX) under both answer formats (agro_jax/eval/agent_eval.py). The sets share one run of batches.
        """
        from agro_jax.data.loader import available_splits, load_examples
        from agro_jax.eval import evaluate
        from agro_jax.eval.agent_eval import GreedyAgent, generate_records, score_records

        cfg = self.config
        # a LoRA GRPO stage's adapters sit on the SFT-merged base: build_policy applies the chain the stage recorded
        policy = cfg.model.hf_path if stage == "base" else self._checkpoints(stage)
        policy_agent = GreedyAgent(cfg, policy, self.tokenizer())  # one load for both example sets
        limit = max(int(cfg.eval.max_examples), 0) or None  # 0: every example of a split
        examples = load_examples(cfg.data.data_dir, cfg.eval.split)[:limit]
        sets = [("held-out", examples, str(cfg.eval.mode), self.workdir / "eval")]
        have = available_splits(cfg.data.data_dir)
        for split in cfg.eval.get("extra_splits", ()):
            if split not in have:  # e.g. factory.skeleton_heldout_fraction 0 writes no test_skeleton split
                self.log(f"[run] eval: the dataset has no split {split!r} (it has {sorted(have)}); skipped")
                continue
            exs = load_examples(cfg.data.data_dir, split)[:limit]
            sets.append((split, exs, str(cfg.eval.mode), self.workdir / "eval" / split))
        if cfg.eval.get("spider_dir"):
            sets.append(("Spider", self._spider_examples(), "spider", self.workdir / "eval" / "spider"))
        # every set's examples share the eval.batch_size batches (a set's last, partial batch is filled by the next
        # set's), then each set is scored on its own
        partial = self.workdir / "eval" / ".partial" / f"{stage}.jsonl"
        every = [e for _, exs, _, _ in sets for e in exs]
        records = generate_records(cfg, every, policy_agent, self.tokenizer(), str(partial), self.log)
        outputs, extra, start = [], {"policy": str(policy)}, 0
        for label, exs, mode, out in sets:
            report = score_records(cfg, exs, records[start : start + len(exs)], mode)
            start += len(exs)
            report["name"] = stage
            outputs += evaluate.write_report(report, str(out), stage)
            key = "ex" if label == "held-out" else f"{out.name}_ex"
            extra.update({key: report["ex"], f"{key}_tags_or_fence": report["tags_or_fence"]["ex"]})
            extra["n" if label == "held-out" else f"{out.name}_n"] = report["num_examples"]
            self.log(f"[run] EX of {stage} on {report['num_examples']} {label} examples: {100 * report['ex']:.2f}% "
                     f"(tags-or-fence {100 * report['tags_or_fence']['ex']:.2f}%)")  # fmt: skip
        partial.unlink(missing_ok=True)  # the reports hold every record now; a --force rerun starts afresh
        if partial.parent.is_dir() and not any(partial.parent.iterdir()):
            partial.parent.rmdir()
        return outputs, extra

    def _spider_examples(self) -> list:
        from agro_jax.eval.agent_eval import spider_subset
        from agro_jax.sql.executor import Executor

        cfg = self.config
        if not pathlib.Path(cfg.eval.spider_dir).is_dir():
            raise FileNotFoundError(f"config.eval.spider_dir={cfg.eval.spider_dir}: no such directory (give a Spider "
                                    "copy with dev.json and database/, or '' for the held-out split only)")  # fmt: skip
        with Executor.from_config(cfg.executor) as ex:
            examples = spider_subset(cfg.eval.spider_dir, int(cfg.eval.spider_every), ex, str(cfg.eval.spider_split),
                                     compact=bool(cfg.factory.schema_compact),
                                     sample_values=int(cfg.factory.schema_sample_values))  # fmt: skip
        if int(cfg.eval.get("spider_max_examples", 0)) > 0:
            examples = examples[: int(cfg.eval.spider_max_examples)]
        return examples


def run_arguments(p) -> None:
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of the stages, run in order")
    p.add_argument("--force", action="store_true", help="rerun the named stages even if they finished before")
    p.epilog = "example:\n  agro-sql run --config configs/tiny_cpu.py --workdir runs/tiny_cpu --stages sft,eval_sft"


def run_main(config, args) -> int:
    from agro_jax.errors import UsageError

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if stage_error(stages):
        raise UsageError(f"--stages {args.stages}: {stage_error(stages)}")
    Pipeline(config, config.workdir).run(stages, force=args.force)
    return 0
