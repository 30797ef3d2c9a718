"""`agro-sql eval` as a user meets it: each mistake is one line (exit 2) naming the input and what would be right; a
full-length Spider predictions file lines up by example index; evaluations of other data sit beside the run's table."""

import json
import shutil

from helpers import cli_error

from agro_jax import cli


def _eval(spider_dir, tmp_path, *extra):
    return ["eval", "--workdir", str(tmp_path), "--data", str(spider_dir), "--format", "spider", *extra]


def test_missing_data_dir(tmp_path, capsys):
    line = cli_error(capsys, _eval(tmp_path / "nope", tmp_path, "--gold-as-pred"))
    assert f"--data {tmp_path / 'nope'}: no such directory" in line


def test_policy_given_the_run_folder_names_its_checkpoints(spider_dir, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "grpo/checkpoints/2").mkdir(parents=True)
    (run / "stages.json").write_text("{}")
    line = cli_error(capsys, _eval(spider_dir, tmp_path, "--policy", str(run)))
    assert f"--policy {run} is a run folder; give one of its checkpoints: {run / 'grpo/checkpoints'}" in line


def test_policy_missing_path(spider_dir, tmp_path, capsys):
    line = cli_error(capsys, _eval(spider_dir, tmp_path, "--policy", str(tmp_path / "ckpt")))
    assert f"--policy {tmp_path / 'ckpt'}: no such file or directory" in line


def test_missing_predictions_file(spider_dir, tmp_path, capsys):
    line = cli_error(capsys, _eval(spider_dir, tmp_path, "--predictions", str(tmp_path / "p.sql")))
    assert f"--predictions {tmp_path / 'p.sql'}: no such file" in line


def test_bird_format_on_spider_data(spider_dir, tmp_path, capsys):
    argv = ["eval", "--workdir", str(tmp_path), "--data", str(spider_dir), "--format", "bird", "--gold-as-pred"]
    assert "is Spider format (records have 'query', not 'SQL'): use --format spider" in cli_error(capsys, argv)


def test_spider_dir_without_databases_is_an_error_not_ex_zero(spider_dir, tmp_path, capsys):
    data = tmp_path / "spider"
    data.mkdir()
    shutil.copy(spider_dir / "dev.json", data / "dev.json")
    line = cli_error(capsys, _eval(data, tmp_path, "--gold-as-pred"))
    assert "none of the 1034 dev examples has its database (expected database/<db_id>/<db_id>.sqlite" in line
    assert not (tmp_path / "eval").exists()


def test_full_length_predictions_align_by_example_index(spider_dir, tmp_path, capsys):
    """dev.json has 1034 examples, 62 of them (indices 429-490, wta_1) without a database: a 1034-line file is read
    by index, so every gold line after the gap still meets its own example (by position 910 of 972 would not)."""
    raw = json.loads((spider_dir / "dev.json").read_text())
    lines = ["SELECT 'no database'" if e["db_id"] == "wta_1" else e["query"] for e in raw]
    (tmp_path / "pred.sql").write_text("\n".join(lines) + "\n")
    assert cli.main(_eval(spider_dir, tmp_path, "--predictions", str(tmp_path / "pred.sql"))) == 0
    report = json.loads((tmp_path / "eval/benchmarks/spider_dev.json").read_text())
    assert report["num_examples"] == 972 and report["num_correct"] == 972
    assert report["skipped_missing_db"] == {"wta_1": 62}
    assert "WARNING skipped 62 of 1034 examples whose database is missing" in capsys.readouterr().out
    (tmp_path / "pred.sql").write_text("\n".join(lines[:1000]) + "\n")  # neither 972 nor 1034 lines: refused
    line = cli_error(capsys, _eval(spider_dir, tmp_path, "--predictions", str(tmp_path / "pred.sql")))
    assert "1000 predictions for 972 examples; give 972 (or 1034: one per example in the file)" in line


def test_eval_of_other_data_is_listed_beside_the_runs_ex_table(spider_dir, tmp_path):
    """The gold-as-pred sanity check (EX 100%) must not become a column of the run's own EX table and plot."""
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval/sft.json").write_text(json.dumps({"name": "sft", "ex": 0.25, "num_examples": 8}))
    assert cli.main(_eval(spider_dir, tmp_path, "--gold-as-pred", "--max-examples", "20")) == 0
    assert (tmp_path / "eval/benchmarks/spider_dev_gold.json").is_file()
    assert not (tmp_path / "eval/spider_dev_gold.json").exists()
    assert cli.main(["report", "--workdir", str(tmp_path)]) == 0
    md = (tmp_path / "report/report.md").read_text()
    table = md[md.index("## Evaluation") : md.index("## Other evaluations")]
    assert "| difficulty | sft |" in table and "gold" not in table
    assert "| spider_dev_gold | spider | 100.00 | 20 | 62 |" in md[md.index("## Other evaluations") :]
