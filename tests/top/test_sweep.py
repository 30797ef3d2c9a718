"""Sweeps: the override algebra, validation against the config, exact generated commands (local and TPU), and a
real sweep of the cheap `report` stage run as subprocesses."""

from __future__ import annotations

import json
import pathlib
import shlex
import subprocess
import sys

import pytest

from agro_jax import sweep as sw
from agro_jax.cli import main
from agro_jax.config import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs/tiny_cpu.py")
LR_BETA = str(REPO / "configs/sweeps/lr_beta.py")


def test_algebra():
    lr, beta = sw.sweep("a.lr", [1, 2]), sw.sweep("b", [0.0, 0.5])
    assert sw.product(lr, beta) == [
        {"a.lr": 1, "b": 0.0},
        {"a.lr": 1, "b": 0.5},
        {"a.lr": 2, "b": 0.0},
        {"a.lr": 2, "b": 0.5},
    ]
    assert sw.zipit(lr, beta) == [{"a.lr": 1, "b": 0.0}, {"a.lr": 2, "b": 0.5}]
    assert sw.chain(lr, beta) == [{"a.lr": 1}, {"a.lr": 2}, {"b": 0.0}, {"b": 0.5}]
    assert sw.product(sw.zipit(lr, beta), sw.sweep("c", ["x"])) == [
        {"a.lr": 1, "b": 0.0, "c": "x"},
        {"a.lr": 2, "b": 0.5, "c": "x"},
    ]
    with pytest.raises(ValueError, match="equal length"):
        sw.zipit(lr, sw.sweep("b", [1, 2, 3]))
    with pytest.raises(ValueError, match=r"same key twice: \['a.lr'\]"):
        sw.product(lr, lr)
    with pytest.raises(ValueError, match="got no values"):
        sw.sweep("a", [])


def test_expand_names_workdirs_and_argv():
    variants = sw.expand(CONFIG, ["--config.seed=3"], LR_BETA, "/w", "grpo")
    assert len(variants) == 6
    v = variants[3]
    assert v.name == "03_learning_rate=0.0002,beta=0.01"
    assert v.overrides == {"grpo.optim.learning_rate": 2e-4, "grpo.beta": 0.01}
    assert v.workdir == "/w/sweep/03_learning_rate=0.0002,beta=0.01"
    assert v.argv == (
        "agro-sql",
        "grpo",
        "--config",
        CONFIG,
        "--config.seed=3",
        "--config.grpo.optim.learning_rate=0.0002",
        "--config.grpo.beta=0.01",
        "--workdir",
        v.workdir,
    )
    # Two keys with the same leaf keep their full path so names stay unambiguous.
    same_leaf = [{"sft.optim.learning_rate": 1e-3, "config.grpo.optim.learning_rate": 1e-4}]
    (v,) = sw.expand(CONFIG, [], "", "w", "grpo", dicts=same_leaf)
    assert v.name == "00_sft.optim.learning_rate=0.001,grpo.optim.learning_rate=0.0001"


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"grpo.betta": 0.1}, r"variant 0 .*unknown config key config.grpo.betta.*did you mean grpo.beta"),
        ({"grpo.steps": "many"}, r"variant 0 .*config.grpo.steps: expected a number, got 'many'"),
        ({"workdir": "elsewhere"}, "must not set config.workdir"),
        ({"grpo.steps": {1: 2}}, "cannot be passed on the command line"),
    ],
)
def test_bad_overrides_fail_before_anything_runs(bad, message):
    with pytest.raises(ConfigError, match=message):
        sw.expand(CONFIG, [], "", "w", "grpo", dicts=[bad])


def test_cli_dry_run_prints_and_writes_commands(tmp_path, capsys):
    argv = ["sweep", "--config", CONFIG, "--workdir", str(tmp_path), "--config.seed=3", "--sweep", LR_BETA + ":quick"]
    assert main([*argv, "--stage", "report", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"sweep: 2 variants -> {tmp_path}/sweep/commands.sh"
    wd = f"{tmp_path}/sweep/01_learning_rate=0.0003,steps=5"
    expected = ["agro-sql", "report", "--config", CONFIG, "--config.seed=3", "--config.grpo.optim.learning_rate=0.0003"]
    assert shlex.split(lines[2]) == [*expected, "--config.grpo.steps=5", "--workdir", wd]
    script = tmp_path / "sweep/commands.sh"
    assert script.read_text().splitlines()[3:] == lines[1:]
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert not (tmp_path / "sweep/00_learning_rate=0.0001,steps=5").exists()  # dry run: nothing ran


def test_tpu_launcher_commands_are_accepted_by_launch_tpu(tmp_path, capsys, monkeypatch):
    # TPU config specs are repo-relative (the repo is what gets copied): run from a dir where they resolve.
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(tmp_path)
    tpu_args = "--zone us-east5-a --accelerator-type v4-8 --dry-run"
    argv = ["sweep", "--config", "configs/tiny_cpu.py", "--workdir", "gs://b/sw", "--sweep", LR_BETA + ":quick"]
    argv += ["--stage", "report", "--launcher", "tpu", "--tpu-args", tpu_args, "--tpu-name", "lr", "--dry-run"]
    assert main(argv) == 0
    # commands.sh of a gs:// sweep goes under ./runs/<escaped url>/, never into a local "gs:" folder.
    assert (tmp_path / "runs/gs_b_sw/sweep/commands.sh").is_file() and not (tmp_path / "gs:").exists()
    cmd = shlex.split(capsys.readouterr().out.splitlines()[1])
    assert cmd[:7] == ["./launch_tpu.sh", "--name", "lr-00", "--config", "configs/tiny_cpu.py", "--stage", "report"]
    # launch_tpu.sh itself (in its own dry-run) turns it into the remote agro-sql command with the overrides.
    # (run by the sweep runner exactly as a non-dry sweep would, from a cwd outside the repo)
    log = tmp_path / "tpu.log"
    assert sw.run_commands([cmd], [log]) == [{"returncode": 0, "seconds": pytest.approx(0, abs=60)}]
    out = log.read_text()
    assert "gcloud compute tpus tpu-vm create lr-00 --zone=us-east5-a --accelerator-type=v4-8" in out
    (remote,) = [c for c in out.splitlines() if "agro-sql report" in c]
    words = shlex.split(shlex.split(remote)[-1].partition("=")[2])  # what the worker's shell runs
    i = words.index("agro-sql")
    assert words[i : i + 4] == ["agro-sql", "report", "--config", "configs/tiny_cpu.py"]
    assert words[i + 4 : i + 8] == [
        "--config.grpo.optim.learning_rate=0.0001",
        "--config.grpo.steps=5",
        "--workdir",
        "gs://b/sw/sweep/00_learning_rate=0.0001,steps=5",
    ]


def test_real_sweep_of_report_stage(tmp_path):
    """Two variants of `agro-sql report` run for real (in parallel), each in its own workdir."""
    sweep_file = tmp_path / "s.py"
    sweep_file.write_text("from agro_jax.sweep import sweep\ndef get_sweep(arg):\n    return sweep('seed', [1, 2])\n")
    for seed in (1, 2):  # give each variant a run folder with metrics to report on
        (tmp_path / f"sweep/0{seed - 1}_seed={seed}/grpo").mkdir(parents=True)
        (tmp_path / f"sweep/0{seed - 1}_seed={seed}/grpo/metrics.jsonl").write_text(
            json.dumps({"step": 0, "reward_mean": seed / 10}) + "\n"
        )
    argv = ["sweep", "--config", CONFIG, "--workdir", str(tmp_path), "--sweep", str(sweep_file), "--stage", "report"]
    assert main([*argv, "--max-parallel", "2"]) == 0
    summary = json.loads((tmp_path / "sweep/summary.json").read_text())
    assert [s["name"] for s in summary] == ["00_seed=1", "01_seed=2"]
    assert [s["returncode"] for s in summary] == [0, 0]
    for seed, s in zip((1, 2), summary):
        md = (pathlib.Path(s["workdir"]) / "report/report.md").read_text()
        assert f"| reward_mean | {seed / 10} |" in md  # each variant reported on its own workdir
        assert "report: " in pathlib.Path(s["log"]).read_text()


def test_runner_records_failures_and_keeps_going(tmp_path):
    ok = [sys.executable, "-c", "print('fine')"]
    bad = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    logs = [tmp_path / f"{i}/log.txt" for i in range(3)]
    results = sw.run_commands([bad, ok, ok], logs, max_parallel=2)
    assert [r["returncode"] for r in results] == [3, 0, 0]
    assert logs[0].read_text() == "boom\n" and logs[2].read_text() == "fine\n"
    with pytest.raises(ValueError, match="max-parallel"):
        sw.run_commands([ok], logs[:1], max_parallel=0)


def test_unknown_stage_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--config", CONFIG, "--workdir", str(tmp_path), "--sweep", LR_BETA, "--stage", "nope"])
    assert e.value.code == 2
    assert "agro-sql sweep: error: --stage 'nope' is not a runnable subcommand" in capsys.readouterr().err
