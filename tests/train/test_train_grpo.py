"""The GRPO stage end to end on the toy env: kill -9 + resume is bit-exact; beta=0 holds/runs no reference."""

import os
import pathlib
import signal
import subprocess
import time

import numpy as np
import pytest
from helpers import REPO_ROOT, TOY, cli_command, toy_config


def _grpo_cmd(workdir, steps):
    extra = [f"--config.grpo.steps={steps}", "--config.checkpoint.every_steps=3", "--config.checkpoint.keep=20"]
    return cli_command("grpo", "--workdir", workdir, *TOY, *extra)


def _final_params(workdir, step):
    import jax

    from agro_jax.train.checkpoint import _path_key, _restore_numpy

    raw = _restore_numpy(pathlib.Path(workdir).absolute() / "grpo/checkpoints" / str(step) / "state")
    return {_path_key(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(raw)}


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # later runs reuse the first run's executables through the session's compilation cache (tests/conftest.py)
    return env


@pytest.mark.slow
def test_kill9_and_resume_is_bit_exact(tmp_path):
    steps, env = 30, _env()
    ref = subprocess.run(_grpo_cmd(tmp_path / "ref", steps), cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-3000:]

    work = tmp_path / "killed"
    proc = subprocess.Popen(
        _grpo_cmd(work, steps), cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    ckpts = work / "grpo/checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        done = [p for p in ckpts.glob("*") if p.name.isdigit() and (p / "commit_success.txt").exists()]
        if any(int(p.name) >= 6 for p in done):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    metrics_lines = (work / "grpo/metrics.jsonl").read_text().splitlines()
    assert len(metrics_lines) < steps, "killed run must not have finished"

    resumed = subprocess.run(_grpo_cmd(work, steps), cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    a, b = _final_params(tmp_path / "ref", steps), _final_params(work, steps)
    assert a.keys() == b.keys() and len(a) > 3
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"param {'/'.join(k)} differs after kill+resume")
    # And training actually moved the params (the comparison is not between two untouched inits).
    first = _final_params(work, 6)
    assert any(not np.array_equal(first[k], a[k]) for k in a)


@pytest.fixture(scope="module")
def beta0_run(tmp_path_factory):
    """A 2-step toy GRPO run, beta 0, with HF export: (workdir, config, final checkpoint, counters)."""
    from agro_jax.train import stages

    workdir = tmp_path_factory.mktemp("b0")
    config = toy_config("--config.grpo.steps=2", "--config.grpo.beta=0.0", "--config.checkpoint.export_hf=true")
    final = stages.run_grpo(config, str(workdir))
    return workdir, config, final, dict(stages.run_grpo.last_counters)


def test_beta_zero_runs_no_reference_and_beta_positive_does(beta0_run, tmp_path):
    from agro_jax.train import stages
    from agro_jax.train.metrics import read_metrics

    workdir, _, final, counters = beta0_run
    assert final is not None and final.name == "2"
    assert counters == {"ref_forwards": 0, "ref_params_held": False}
    rows = read_metrics(workdir / "grpo/metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and "kl" not in rows[0]
    assert list((workdir / "grpo/tb").glob("events.out.tfevents.*")), "no TensorBoard events written"

    stages.run_grpo(toy_config("--config.grpo.steps=2", "--config.grpo.beta=0.1"), str(tmp_path / "b1"))
    assert stages.run_grpo.last_counters == {"ref_forwards": 2, "ref_params_held": True}
    rows = read_metrics(tmp_path / "b1/grpo/metrics.jsonl")
    # The policy moved after step 1, so step 2 sees a positive k3 KL to the frozen reference.
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and rows[1]["kl"] > 0
    for key in ("reward_mean", "reward_std", "clip_frac", "entropy", "completion_len", "time/rollout", "time/update"):
        assert key in rows[1], key


def test_export_hf_reloads_the_trained_policy(beta0_run):
    """checkpoint.export_hf: <workdir>/grpo/hf holds exactly the trained params (bit-exact through our importer) and
    transformers computes the same logits from it."""
    import jax
    import torch
    from flax import nnx
    from transformers import AutoModelForCausalLM

    from agro_jax.model.hf_io import load_hf_checkpoint
    from agro_jax.model.qwen import make_causal_mask, positions_from_valid
    from agro_jax.train import stages

    workdir, config, final, _ = beta0_run
    trained = {k[1:]: v for k, v in _final_params(workdir, int(final.name)).items() if k[0] == "params"}
    model, cfg = load_hf_checkpoint(workdir / "grpo/hf")
    exported = {
        tuple(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }
    assert exported.keys() == trained.keys() and len(exported) > 10
    for k in exported:
        np.testing.assert_array_equal(exported[k], trained[k], err_msg="/".join(k))
    _, init_model, _ = stages.build_policy(config, 64)  # same seed: the params before training
    init = {
        tuple(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(init_model, nnx.Param))
    }
    assert any(not np.array_equal(init[k], exported[k]) for k in exported), "export holds the untrained init"
    # --init_from <hf dir> starts the next stage from exactly these weights, with config.model's dtypes applied.
    _, again, _ = stages.build_policy(
        toy_config("--config.model.param_dtype=bfloat16"), 64, init_from=workdir / "grpo/hf"
    )
    again = {tuple(map(str, k)): v.get_value() for k, v in nnx.to_flat_state(nnx.state(again, nnx.Param))}
    assert again.keys() == exported.keys() and all(v.dtype == jax.numpy.bfloat16 for v in again.values())
    for k in exported:
        np.testing.assert_array_equal(np.asarray(again[k], np.float32), exported[k].astype(jax.numpy.bfloat16))

    rng = np.random.default_rng(0)
    tokens, valid = rng.integers(0, cfg.vocab_size, (2, 12)).astype(np.int32), np.ones((2, 12), bool)
    valid[1, :4] = False  # left padding
    ours = np.asarray(model(tokens, positions_from_valid(valid), make_causal_mask(valid))[0])  # on one device
    hf = AutoModelForCausalLM.from_pretrained(str(workdir / "grpo/hf"), attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = hf(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(valid, dtype=torch.long),
            position_ids=torch.tensor(np.asarray(positions_from_valid(valid)), dtype=torch.long),
        ).logits.numpy()
    assert np.abs(ours[valid] - theirs[valid]).max() <= 1e-4


def test_toy_env_refuses_a_prompt_filter_it_cannot_apply(tmp_path):
    from agro_jax.train import stages

    (tmp_path / "sft").mkdir()
    (tmp_path / "sft/selected.jsonl").write_text('{"question": "q", "sql": "SELECT 1"}\n')
    config = toy_config("--config.grpo.steps=1", "--config.grpo.prompts=not_in_sft")
    with pytest.raises(ValueError, match="needs grpo.env='sql'"):
        stages.run_grpo(config, str(tmp_path))
