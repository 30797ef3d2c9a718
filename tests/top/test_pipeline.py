"""`agro-sql run` end to end on a shrunken embedded default: every stage runs for real (factory over SQLite, TFDS,
BPE tokenizer, SFT, greedy agent eval through the executor pool, GRPO with agent rollouts, report), then resumes."""

import json
import pathlib

import pytest

from agro_jax import cli
from agro_jax.pipeline import STAGES

SMALL = [
    "--config.factory.num_examples=48",
    "--config.factory.rounds=1",
    "--config.factory.candidates_per_round=150",
    "--config.factory.heldout_by=skeleton",  # 48 examples: too few repeated queries for the literal split
    "--config.factory.heldout_fraction=0.15",
    "--config.factory.skeleton_heldout_fraction=0.0",  # so eval.extra_splits' test_skeleton is absent: skipped
    "--config.tokenizer.vocab_size=600",
    "--config.model.hidden_size=64",
    "--config.model.intermediate_size=192",
    "--config.model.head_dim=16",
    "--config.sft.num_selected=16",
    "--config.sft.batch_size=8",
    "--config.sft.epochs=1",
    "--config.grpo.steps=2",
    "--config.grpo.prompts_per_step=4",
    "--config.grpo.group_size=2",
    "--config.grpo.probe_every=1",
    "--config.grpo.probe_examples=4",
    "--config.rollout.max_turns=2",
    "--config.rollout.max_new_tokens_per_turn=12",
    "--config.eval.max_examples=8",
    "--config.eval.batch_size=8",
    "--config.checkpoint.every_steps=1",
    "--config.checkpoint.async_save=False",
]


def _run(workdir, *extra):
    return cli.main(["run", "--config", "configs/tiny_cpu.py", "--workdir", str(workdir), *SMALL, *extra])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    assert _run(workdir) == 0
    return workdir


def test_every_stage_leaves_its_outputs(run_dir: pathlib.Path):
    state = json.loads((run_dir / "stages.json").read_text())
    assert list(state) == list(STAGES)
    assert (run_dir / "factory/tfds/agro_sql/1.0.0/dataset_info.json").is_file()
    assert (run_dir / "tokenizer/tokenizer.json").is_file()
    assert state["sft"]["checkpoint"].endswith("sft/checkpoints/2")  # 16 trajectories / batch 8 x 1 epoch
    assert state["grpo"]["init_from"] == str(run_dir / "sft/checkpoints")  # its newest intact step
    assert state["eval_base"] == {**state["eval_base"], "outputs": [], "skipped": "config.eval.base is off"}
    assert state["grpo"]["checkpoint"].endswith("grpo/checkpoints/2")
    assert (run_dir / "grpo/hf/config.json").is_file() and (run_dir / "sft/hf/config.json").is_file()
    rows = [json.loads(line) for line in (run_dir / "grpo/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all("reward_mean" in r for r in rows)
    assert "probe_init/reward" in rows[0] and all(-1 <= r["probe/reward"] <= 1 for r in rows)  # greedy held-out probe


def test_eval_reports_ex_before_and_after_grpo(run_dir: pathlib.Path):
    for stage in ("sft", "grpo"):
        report = json.loads((run_dir / f"eval/{stage}.json").read_text())
        assert report["name"] == stage and report["num_examples"] == 8
        assert 0.0 <= report["ex"] <= 1.0 and sum(report["reasons"].values()) == 8
    md = (run_dir / "report/report.md").read_text()
    assert "## Evaluation (execution accuracy, %)" in md and "| difficulty | sft | grpo |" in md
    assert "## Data factory" in md and "## GRPO" in md and "## SFT" in md
    for png in ("eval_ex.png", "grpo.png", "sft.png", "factory.png"):
        assert (run_dir / "report" / png).stat().st_size > 1000


def test_rerun_skips_finished_stages_and_redoes_missing_outputs(run_dir: pathlib.Path, capsys):
    before = json.loads((run_dir / "stages.json").read_text())
    (run_dir / "eval/grpo.json").unlink()  # a lost output: only its stage (and nothing before it) runs again
    capsys.readouterr()
    assert _run(run_dir) == 0
    log = capsys.readouterr().out
    for stage in ("factory", "tokenizer", "sft", "eval_sft", "grpo", "report"):
        assert f"{stage}: done earlier" in log
    assert "=== eval_grpo ===" in log and (run_dir / "eval/grpo.json").is_file()
    after = json.loads((run_dir / "stages.json").read_text())
    assert after["sft"] == before["sft"] and after["grpo"] == before["grpo"]


def test_unknown_stage_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _run(tmp_path, "--stages", "factory,finetune")
    assert "unknown stage(s) ['finetune']" in capsys.readouterr().err


def test_pretrained_hf_policy_keeps_its_tokenizer(run_dir: pathlib.Path, tmp_path):
    """model.hf_path (here: the GRPO stage's own HF export) -> no BPE is trained; SFT starts from those weights."""
    from agro_jax.model.hf_io import load_hf_checkpoint

    hf = run_dir / "grpo/hf"
    assert _run(tmp_path, f"--config.model.hf_path={hf}", "--stages", "factory,tokenizer,sft") == 0
    state = json.loads((tmp_path / "stages.json").read_text())
    assert state["tokenizer"]["outputs"] == [str(hf)] and not (tmp_path / "tokenizer").exists()
    _, model_cfg = load_hf_checkpoint(str(hf))
    assert state["tokenizer"]["vocab_size"] <= model_cfg.vocab_size
    assert (tmp_path / "sft/checkpoints/2").is_dir() and (tmp_path / "sft/hf/tokenizer.json").is_file()


def test_eval_cli_runs_a_trained_policy_on_spider(run_dir: pathlib.Path, spider_dir, tmp_path):
    """`agro-sql eval --policy`: the run's GRPO checkpoint (tokenizer found in the run folder) answers Spider dev."""
    ckpt = run_dir / "grpo/checkpoints/2"
    args = ["eval", "--config", "configs/tiny_cpu.py", "--workdir", str(tmp_path), *SMALL]
    args += ["--data", str(spider_dir), "--format", "spider", "--policy", str(ckpt), "--max-examples", "8"]
    assert cli.main(args) == 0
    report = json.loads((tmp_path / "eval/benchmarks/spider_dev_policy.json").read_text())
    assert report["num_examples"] == 8 and sum(report["reasons"].values()) == 8
    assert all(e["db_id"] for e in report["per_example"])


def test_grpo_alone_finds_the_runs_data_and_sft_checkpoint(run_dir: pathlib.Path, tmp_path, capsys):
    """`agro-sql grpo --workdir <run folder>` (no --init-from, no data_dir): factory/tfds and the SFT checkpoint are
    found where the pipeline put them (the issue: it did not find the run's own factory/tfds)."""
    import shutil

    work = tmp_path / "w"
    for part in ("factory", "tokenizer", "sft"):
        shutil.copytree(run_dir / part, work / part)
    capsys.readouterr()
    args = ["grpo", "--config", "configs/tiny_cpu.py", "--workdir", str(work), *SMALL, "--max-steps", "1"]
    assert cli.main(args) == 0
    assert f"grpo: starting from the SFT checkpoint {work}/sft/checkpoints/2" in capsys.readouterr().out
    assert (work / "grpo/checkpoints/1").is_dir()


def test_sampled_probe_scores_k_episodes_per_question_with_the_same_draw_each_time(run_dir: pathlib.Path):
    """grpo.probe_samples=k: k sampled episodes per probe question, drawn with the same key at every probe, so an
    unchanged policy scores exactly the same twice (the probe's differences are the policy's, not the draw's)."""
    import jax

    from agro_jax.config import load_config
    from agro_jax.rl.grpo import split_model
    from agro_jax.rollout.envs import SqlEnv
    from agro_jax.train import grpo_probe
    from agro_jax.train.stages import build_policy, resolve_tokenizer

    config = load_config("configs/tiny_cpu.py", [*SMALL, f"--config.data.data_dir={run_dir}/factory/tfds"])
    tokenizer = resolve_tokenizer(config, run_dir)
    mesh, model, model_cfg = build_policy(config, len(tokenizer), run_dir / "sft/checkpoints")
    graphdef, params, rest = split_model(model)
    examples = grpo_probe.probe_examples(config, 4)
    with jax.set_mesh(mesh):
        env = SqlEnv(config, graphdef, rest, model_cfg, tokenizer)
        try:
            greedy = grpo_probe.probe(env, params, examples, config, "probe")
            with config.unlocked():
                config.grpo.probe_samples = 3
            first, again = (grpo_probe.probe(env, params, examples, config, "probe") for _ in range(2))
            with config.unlocked():
                config.grpo.probe_samples = -1
            with pytest.raises(ValueError, match="probe_samples=-1 must be >= 0"):
                grpo_probe.probe(env, params, examples, config, "probe")
        finally:
            env.close()
    assert greedy["probe/episodes"] == 4 and first["probe/episodes"] == 12
    drop_time = lambda m: {k: v for k, v in m.items() if not k.startswith("time/")}  # noqa: E731
    assert drop_time(first) == drop_time(again)
    assert all(-1.0 <= first[k] <= 1.0 for k in ("probe/ex", "probe/reward", "probe/format_rate"))


def test_eval_of_a_damaged_latest_checkpoint_falls_back_to_the_step_before(run_dir: pathlib.Path, tmp_path, caplog):
    """eval_sft loads the SFT checkpoints dir, not the recorded step dir: a damaged latest step (emptied _METADATA)
    is skipped with one warning line and step 1 is evaluated (a step dir would have been a DamagedCheckpoint error)."""
    import shutil

    work = tmp_path / "w"
    for part in ("factory", "tokenizer", "sft"):
        shutil.copytree(run_dir / part, work / part)
    (work / "sft/checkpoints/2/state/_METADATA").write_bytes(b"")
    assert _run(work, "--stages", "eval_sft") == 0
    assert "checkpoint step 2 is damaged" in caplog.text and "using step 1 instead" in caplog.text
    state = json.loads((work / "stages.json").read_text())
    assert state["eval_sft"]["policy"] == str(work / "sft/checkpoints") and state["eval_sft"]["n"] == 8
