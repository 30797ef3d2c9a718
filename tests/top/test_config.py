import pathlib

import pytest

from agro_jax.config import ConfigError, load_config

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["tiny_cpu.py", "qwen3_8b_tpu.py"])
def test_configs_load(name):
    config = load_config(str(CONFIGS / name))
    assert config.grpo.group_size > 1
    assert config.mesh.axis_names == ("data", "fsdp", "tensor")


def test_paper_scale_config_matches_paper():
    config = load_config(str(CONFIGS / "qwen3_8b_tpu.py") + ":/models/q3")
    assert config.model.hf_path == "/models/q3"
    assert (config.grpo.group_size, config.grpo.prompts_per_step) == (10, 256)
    assert config.grpo.optim.learning_rate == pytest.approx(5e-6)
    assert config.rollout.temperature == pytest.approx(0.7)


def test_overrides_parse_with_field_types():
    config = load_config(
        str(CONFIGS / "tiny_cpu.py"),
        [
            "--config.grpo.steps=7",
            "--config.grpo.beta=0.05",
            "--config.model.tie_word_embeddings=false",
            "--config.mesh.shape=(2,2,2)",
            "--config.workdir=/tmp/x",
        ],
    )
    assert config.grpo.steps == 7 and isinstance(config.grpo.steps, int)
    assert config.grpo.beta == pytest.approx(0.05)
    assert config.model.tie_word_embeddings is False
    assert config.mesh.shape == (2, 2, 2)
    assert config.workdir == "/tmp/x"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("--config.grpo.stpes=3", "grpo.stpes"),
        ("--config.nope.x=1", "nope"),
        ("--config.grpo.steps=abc", "grpo.steps"),
        ("--config.grpo.steps=1.5", "grpo.steps"),
        ("--config.model.tie_word_embeddings=maybe", "tie_word_embeddings"),
        ("--config.grpo=1", "section"),
        ("--config.grpo.steps", "a.b=value"),
    ],
)
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(str(CONFIGS / "tiny_cpu.py"), [override])


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.py"))
    (tmp_path / "noget.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="get_config"):
        load_config(str(tmp_path / "noget.py"))
    (tmp_path / "broken.py").write_text("def get_config(arg):\n    return 1/0\n")
    with pytest.raises(ZeroDivisionError):
        load_config(str(tmp_path / "broken.py"))
    (tmp_path / "syntax.py").write_text("def get_config(:\n")
    with pytest.raises(ConfigError, match="failed to import"):
        load_config(str(tmp_path / "syntax.py"))
