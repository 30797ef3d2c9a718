"""`agro-sql` as a new user meets it: real --help for every subcommand, dashed flags (old spellings still work),
one-line errors with exit code 2 (tracebacks only with --debug), "did you mean" that finds what was meant, no silent
surprises in the factory, and quiet third-party logs."""

import logging
import re
import subprocess
import sys

import pytest
from helpers import REPO_ROOT, cli_error

from agro_jax import cli

# The flags each subcommand must show in its --help (the issue found them only in usage lines after an error).
FLAGS = {
    "run": ["--stages", "--force"],
    "sft": ["--init-from", "--max-steps"],
    "grpo": ["--init-from", "--max-steps"],
    "eval": ["--data", "--format", "--policy", "--predictions", "--gold-as-pred", "--max-examples", "--out"],
    "convert": ["--in", "--out", "--dtype"],
    "sweep": ["--sweep", "--stage", "--dry-run"],
    "factory": ["--out", "--num-examples", "--no-tfds"],
    "report": ["--out"],
}


def _help(capsys, *argv) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(cli.SUBCOMMANDS))
def test_help_lists_every_flag_with_defaults_and_an_example(name, capsys):
    text = _help(capsys, name)
    _, add = cli._entry(name)
    assert add is not None, f"{name}: no {cli.SUBCOMMANDS[name][0].split(':')[1].removesuffix('_main')}_arguments"
    _, subparsers = cli.build_parser(name)
    own = [s for a in subparsers[name]._actions for s in a.option_strings if s.startswith("--")]
    for flag in [*own, *FLAGS.get(name, []), "--config", "--workdir", "--debug"]:
        assert flag in text, f"agro-sql {name} --help does not show {flag}"
    assert re.search(r"examples?:\n  agro-sql ", text) and "(default: configs/tiny_cpu.py)" in " ".join(text.split())


def test_top_level_help_lists_every_subcommand(capsys):
    text = _help(capsys)
    assert all(name in text for name in cli.SUBCOMMANDS)


def test_flags_are_dashed_and_the_old_underscore_spellings_still_work(tmp_path, capsys):
    text = _help(capsys, "grpo")
    assert "--init-from" in text and "--init_from" not in text and "--max_steps" not in text
    grpo = cli.build_parser("grpo")[1]["grpo"]
    assert cli.dash_aliases(["--init_from=a", "--max_steps", "3", "--", "--x_y"], grpo) == [
        "--init-from=a", "--max-steps", "3", "--", "--x_y"]  # fmt: skip
    line = cli_error(capsys, ["grpo", "--workdir", str(tmp_path), "--init_from", str(tmp_path / "w"), "--max_steps=1"])
    assert "no training data" in line  # parsed fine; stopped at the first missing input


def test_unknown_flag_is_one_line_with_a_suggestion(capsys):
    line = cli_error(capsys, ["eval", "--data", "d", "--format", "spider", "--polcy", "p"])
    assert "unrecognized arguments: --polcy (did you mean --policy?)" in line


@pytest.mark.parametrize(
    "typed,meant", [("grp", "grpo"), ("evl", "eval"), ("reprot", "report"), ("getmodel", "get-model")]
)
def test_mistyped_command_is_one_line_with_a_suggestion(typed, meant, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([typed, "--workdir", "x"])
    assert e.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"agro-sql: error: unknown command '{typed}'; did you mean '{meant}'? commands: ")


def test_unrelated_command_lists_the_commands_without_a_guess(capsys):
    with pytest.raises(SystemExit):
        cli.main(["xyzzy"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unknown command 'xyzzy'; commands: convert, eval," in line and "did you mean" not in line


def test_did_you_mean_finds_learning_rate_for_lr(capsys):
    line = cli_error(capsys, ["grpo", "--config.grpo.optim.lr=1e-3"])
    assert "unknown config key config.grpo.optim.lr" in line and "did you mean grpo.optim.learning_rate," in line


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    from agro_jax.errors import MissingInputError

    argv = ["eval", "--data", str(tmp_path / "nope"), "--format", "spider", "--gold-as-pred"]
    with pytest.raises(MissingInputError):
        cli.main([*argv, "--debug"])
    monkeypatch.setenv("AGRO_DEBUG", "1")
    with pytest.raises(MissingInputError):
        cli.main(argv)


def test_convert_in_an_empty_dir(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = cli_error(capsys, ["convert", "--in", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert f"--in {tmp_path / 'empty'}: no config.json in it; give an HF checkpoint dir" in line


def test_factory_unknown_database(tmp_path, capsys):
    argv = ["factory", "--workdir", str(tmp_path), "--config.factory.databases=('university', 'retial')"]
    line = cli_error(capsys, argv)
    assert "unknown database domain 'retial'; did you mean 'retail'?" in line
    assert not (tmp_path / "factory/databases/retial").exists()


def test_factory_extra_databases_matching_nothing(tmp_path, capsys):
    argv = ["factory", "--workdir", str(tmp_path), f"--config.factory.extra_databases=('{tmp_path}/dbs/*.sqlite',)"]
    assert f"config.factory.extra_databases: '{tmp_path}/dbs/*.sqlite' matches no file" in cli_error(capsys, argv)


def test_factory_no_tfds_does_not_point_at_a_tfds_dir(tmp_path, capsys):
    argv = ["factory", "--workdir", str(tmp_path), "--no-tfds", "--num-examples", "16", "--rounds", "1"]
    assert cli.main([*argv, "--config.factory.candidates_per_round=60", "--config.factory.heldout_by=skeleton"]) == 0
    out = capsys.readouterr().out
    assert "no TFDS dataset written (--no-tfds)" in out and "data_dir=" not in out
    assert (tmp_path / "factory/examples.jsonl").is_file() and not (tmp_path / "factory/tfds").exists()


def test_factory_too_small_for_the_literal_split(tmp_path, capsys):
    """16 examples keep no query with two literal values: one clear line, not a missing 'test' split at eval time."""
    argv = ["factory", "--workdir", str(tmp_path), "--no-tfds", "--num-examples", "16", "--rounds", "1"]
    line = cli_error(capsys, [*argv, "--config.factory.candidates_per_round=60"])
    assert "held out 0 of" in line and "by 'literal'" in line and "factory.heldout_by='skeleton'" in line


def test_quiet_transformers_without_torch():
    """transformers imported without torch (the fresh-clone install) prints its advisory unless agro-sql quiets it."""
    code = "import sys; sys.modules['torch'] = None\n{}import transformers"
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    loud = subprocess.run([sys.executable, "-c", code.format("")], capture_output=True, text=True, env=env)
    quiet_code = code.format("from agro_jax import cli; cli.quiet_third_party()\n")
    quiet = subprocess.run([sys.executable, "-c", quiet_code], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert "PyTorch was not found" in loud.stderr and quiet.returncode == 0
    assert "PyTorch was not found" not in quiet.stderr + quiet.stdout


def test_quiet_checkpoint_load_and_tfds_build(tmp_path, caplog, capsys):
    import jax.numpy as jnp

    from agro_jax.train.checkpoint import Checkpointer, load_params
    from data_factory.tfds_builder import FIELDS, build_dataset

    ckpt = Checkpointer(tmp_path / "ckpt", async_save=False)
    params = {"w": jnp.ones((2, 3))}
    ckpt.save(1, params=params, opt_state={}, rng_key=__import__("jax").random.key(0))
    ckpt.close()
    with caplog.at_level(logging.INFO):
        assert float(load_params(tmp_path / "ckpt", params)["w"].sum()) == 6.0
    assert not [r for r in caplog.records if "Metadata file does not exist" in r.getMessage()]
    record = {k: "x" for k in FIELDS} | {"split": "train"}
    build_dataset([record], str(tmp_path / "tfds"))
    assert "Downloading and preparing" not in capsys.readouterr().out
