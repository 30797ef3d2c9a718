"""`agro-sql plan`: real libtpu AOT compiles for TPU slices (no TPU here). The GRPO update's per-chip argument bytes
equal the analytic params + Adam state + batch per chip; an over-budget batch is reported as not fitting (exit 3).

Measured (libtpu 0.0.42.1): the plan below gives 9,473,536 argument bytes vs 9,472,040 analytic (+0.02%: scalars
and tile padding), ~30 s of compile CPU time; the over-budget compile fails in ~3 s CPU. The model's dims are
multiples of TPU tiles (128 lanes): with hidden 64 the padding to tiles alone doubles the bytes."""

import json

import pytest

from agro_jax import cli

# 1 layer, hidden 512, 8 x 128 heads, FFN 512, V 512; FSDP over the 4 chips of a v5e-4; 32 rows x T=128, M = 1
SMALL = ["--config", "configs/tiny_cpu.py", "--config.model.vocab_size=512", "--config.model.hidden_size=512",
         "--config.model.num_heads=8", "--config.model.num_kv_heads=8", "--config.model.head_dim=128",
         "--config.model.intermediate_size=512", "--config.model.num_layers=1", "--config.mesh.shape=(1,-1,1)",
         "--config.rollout.max_total_len=128", "--config.grpo.prompts_per_step=8",
         "--config.grpo.group_size=4"]  # fmt: skip


def analytic_args_per_chip(chips=4, d=512, heads=8, kv=8, h=128, f=512, v=512, layers=1, rows=32, t=128) -> float:
    """float32 params x 3 (params, Adam mu, nu) + the GRPO batch (tokens i32, valid bool, mask/old_logp f32 per token,
    adv f32 per row), all split over the chips (FSDP shards every weight; the norm scales are too small to matter)."""
    per_layer = d * heads * h * 2 + d * kv * h * 2 + 3 * d * f + 2 * d + 2 * h  # q, o, k, v, MLP, norms, qk-norms
    params = v * d + layers * per_layer + d  # tied embedding, blocks, final norm
    batch = rows * t * (4 + 1 + 4 + 4) + rows * 4
    return (3 * 4 * params + batch) / chips


def test_plan_arguments_equal_params_and_adam_state(tmp_path, capsys):
    out = tmp_path / "plan.json"
    progs = "grpo_update,rollout_prefill,rollout_decode"
    code = cli.main(["plan", *SMALL, "--topology", "v5e-4", "--programs", progs, "--json", str(out)])
    assert code == 0, capsys.readouterr().out
    report = json.loads(out.read_text())
    got = {p["name"]: p for p in report["programs"]}
    assert report["chips"] == 4 and report["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert sorted(got) == sorted(progs.split(",")) and all(p["fits"] for p in got.values())
    update = got["grpo_update"]
    want = analytic_args_per_chip()
    assert abs(update["argument_bytes"] / want - 1) < 0.02, (update["argument_bytes"], want)
    # no loop repeats a matmul here (M = 1, layers unrolled): the jaxpr count and XLA's cost analysis agree
    assert 0.8 < update["flops"] / update["xla_flops"] < 1.2, (update["flops"], update["xla_flops"])
    # decode of the 32 rollout rows (8 prompts x G=4, one chunk) over 128 slots: float32 params + the K and V cache
    # (1 layer x 8 kv heads x 128) + the rows' last logits, rows over the 4 chips; the Adam state is held beside it
    params_chip = (want * 4 - 32 * 128 * 13 - 32 * 4) / 3 / 4
    kv_chip = 2 * 32 * 128 * 8 * 128 * 4 / 4
    decode = got["rollout_decode"]
    assert abs(decode["argument_bytes"] / (params_chip + kv_chip + 32 * 512 * 4 / 4) - 1) < 0.05, decode
    assert abs(decode["resident_bytes"] / (2 * params_chip) - 1) < 0.01, decode
    assert "| grpo_update" in capsys.readouterr().out


def test_plan_over_budget_exits_3_naming_program_and_knob(capsys):
    # 256 rows x 8192 tokens in one micro-batch on one 16 GB chip: the compiler itself runs out of HBM
    argv = ["plan", "--config", "configs/tiny_cpu.py", "--config.model.vocab_size=1024", "--topology", "v5e-1",
            "--config.grpo.prompts_per_step=64", "--config.rollout.max_total_len=8192",
            "--programs", "grpo_update"]  # fmt: skip
    assert cli.main(argv) == 3
    text = capsys.readouterr().out
    line = next(x for x in text.splitlines() if x.startswith("does not fit"))
    assert "grpo_update" in line and "grad_accum_steps" in line and "of 15.75" in line, line


@pytest.mark.parametrize("topology,words", [("v5p-6", "no standard v5p slice"), ("v9-8", "unknown TPU slice")])
def test_plan_bad_topology_is_one_line(topology, words, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["plan", "--topology", topology])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


@pytest.mark.parametrize("name,chips", [("v5p:2x1x1", 2), ("v5p:1x1x1", 1), ("v6e:1x2", 2)])
def test_grids_smaller_than_a_host_give_their_chips(name, chips):
    """A grid smaller than a host's 2x2x1 chips (libtpu rejected v5p:2x1x1 as not divisible by it) is one host."""
    from agro_jax.plan import topologies

    devices = topologies.topology_devices(topologies.parse_topology(name))
    assert len(devices) == chips and all(d.platform == "tpu" for d in devices), devices
