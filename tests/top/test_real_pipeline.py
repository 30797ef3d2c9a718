"""`agro-sql run --config configs/qwen25_coder_05b.py:cpu`, shrunk to CI size, on the real Qwen2.5-Coder-0.5B-Instruct:
every stage runs on the real model (factory, eval_base on the held-out split and a Spider subset, LoRA cold start,
eval, GRPO with its rollouts on the real executor, eval, report) and the cold start raises the rate of well-formed agent
turns (the instruct model answers in ```sql fences, never in the agent's tags: 0 well-formed turns before).

Measured (2026-12-01, commit f13f239 + this REDUCED: 4 SFT trajectories in 2 steps at lr 2e-3, one GRPO prompt x 2
samples; shared 2-core CPU, two other jobs running): 291 s wall, 268 s CPU of the run's process (stages.json cpu_s:
factory 2, tokenizer 3, eval_base 37, sft 67, eval_sft 47, grpo 71, eval_grpo 40, report 1); the earlier 8 trajectories
/ 4 steps / 2 x 2 version took 404 s CPU (262 s wall on a quiet machine). Well-formed agent turns (held-out + Spider):
base 0/4, after the cold start 4/6 (Spider 4/4, held-out 0/2), after GRPO 4/6, as with 4 SFT steps; the one GRPO
step's group had equal rewards (kept_frac 0), so it did not change the policy."""

import json

import pytest
from helpers import run_cli

from agro_jax.pipeline import STAGES

pytestmark = pytest.mark.memory_heavy  # the real model (see tests/conftest.py)
REDUCED = [
    "--config.factory.num_examples=48",
    "--config.factory.rounds=1",
    "--config.factory.candidates_per_round=150",
    "--config.eval.max_examples=2",
    "--config.eval.spider_max_examples=2",
    "--config.eval.batch_size=4",
    "--config.sft.num_selected=4",
    "--config.sft.batch_size=2",
    "--config.sft.epochs=1",
    "--config.sft.optim.learning_rate=2e-3",
    "--config.sft.optim.warmup_steps=0",
    "--config.sft.optim.total_steps=2",
    "--config.sft.optim.grad_accum_steps=2",  # one sequence per micro-batch: XLA plans ~3.7 GB temp per 512 tokens
    "--config.grpo.steps=1",
    "--config.grpo.prompts_per_step=1",
    "--config.grpo.group_size=2",
    "--config.grpo.optim.grad_accum_steps=2",
    "--config.rollout.max_turns=2",
    "--config.rollout.max_new_tokens_per_turn=48",
    "--config.rollout.max_total_len=1024",
    "--config.checkpoint.every_steps=1",
    "--config.checkpoint.async_save=False",
    "--config.checkpoint.export_hf=False",
]


@pytest.mark.real_model
def test_every_stage_runs_on_the_real_model_and_the_cold_start_teaches_the_protocol(real_qwen_dir, spider_dir,
                                                                                     tmp_path):  # fmt: skip
    args = ["run", "--config", "configs/qwen25_coder_05b.py:cpu", "--workdir", str(tmp_path), *REDUCED,
            f"--config.model.hf_path={real_qwen_dir}", f"--config.tokenizer.path={real_qwen_dir}",
            f"--config.eval.spider_dir={spider_dir}"]  # fmt: skip
    # One CPU device, as `agro-sql run` sees it: on the tests' 8-device mesh the data-parallel policy would hold 8
    # replicas of its 2.5 GB of float32 weights (the process was OOM-killed at 10 GB while loading the second copy).
    # The three evaluations run the same sampler programs (the policy's shapes do not change): compiled once, through
    # the session's compilation cache that the subprocess inherits (tests/conftest.py).
    run_cli(*args, fast_compile=False)
    state = json.loads((tmp_path / "stages.json").read_text())
    assert list(state) == list(STAGES)
    assert state["sft"]["checkpoint"].endswith("sft/checkpoints/2")  # 4 trajectories / batch 2 x 1 epoch
    assert state["grpo"]["checkpoint"].endswith("grpo/checkpoints/1")

    rates = {}
    for stage in ("base", "sft", "grpo"):
        held, spider = (json.loads((tmp_path / d / f"{stage}.json").read_text()) for d in ("eval", "eval/spider"))
        for r in (held, spider):
            assert r["num_examples"] == 2 and sum(r["reasons"].values()) == 2
            assert r["agent"]["turns"] >= 2 and all(e["transcript"]["turns"] for e in r["per_example"])
            assert r["tags_or_fence"]["num_correct"] >= r["num_correct"]  # fenced answers are accepted on top
        good = held["agent"]["well_formed_turns"] + spider["agent"]["well_formed_turns"]
        rates[stage] = good / (held["agent"]["turns"] + spider["agent"]["turns"])
    assert rates["sft"] > rates["base"], f"well-formed agent turns base -> sft -> grpo: {rates}"

    rows = [json.loads(x) for x in (tmp_path / "grpo/metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and -1.0 <= rows[0]["reward_mean"] <= 1.0 and rows[0]["turns"] >= 1
    md = (tmp_path / "report/report.md").read_text()
    assert "## Agent behaviour: held-out split" in md and "## Agent behaviour: Spider subset" in md
    assert "| base |" in md and "| sft |" in md and "| grpo |" in md
