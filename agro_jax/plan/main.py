"""`agro-sql plan`: does the config fit a TPU slice? Per program: per-chip HBM, FLOPs, a step-time lower bound.

Exit 0 when every program fits, 3 when one does not (each named with the config keys that move it), 2 for a bad
flag or a missing libtpu.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax

from agro_jax.errors import UsageError
from agro_jax.plan import programs, topologies

PROGRAMS = ("grpo_update", "grpo_logp", "sft_step", "rollout_prefill", "rollout_decode")
NOT_FIT = 3
GIB = 1 << 30


def plan_arguments(p) -> None:
    p.add_argument("--topology", required=True, help="TPU slice: v5p-64, v4-32, v5e-8 (v5litepod-8), v6e-1, v5p:2x4x4")
    p.add_argument("--programs", default="all", help=f"comma-separated subset of {', '.join(PROGRAMS)}")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.epilog = "example:\n  agro-sql plan --config configs/qwen3_8b_tpu.py --topology v5p-64"


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def _num(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def _count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def format_table(results: list, topology) -> str:
    chip = topology.chip
    head = ("program", "shape", "args", "temp", "out", "alias", "in use", "+held", "total", "fits", "TFLOP/chip",
            "step >= s", "compile s")  # fmt: skip
    rows = []
    for r in results:
        fits = "yes" if r.fits else "NO"
        bound = r.flops / chip.peak_bf16_flops
        sizes = [r.argument_bytes, r.temp_bytes, r.output_bytes, r.alias_bytes, r.peak_bytes, r.resident_bytes]
        cells = [programs.size_str(n) for n in sizes + [r.total_bytes]]
        rows.append((r.name, r.shape, *cells, fits, _num(r.flops / 1e12), _num(bound), f"{r.compile_s:.0f}"))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *map(line, rows)])


def _select(spec: str) -> tuple[str, ...]:
    if spec == "all":
        return PROGRAMS
    names = tuple(s.strip() for s in spec.split(",") if s.strip())
    bad = [n for n in names if n not in PROGRAMS]
    if bad or not names:
        raise UsageError(f"--programs {spec!r}: unknown {bad or 'empty'}; choose from {', '.join(PROGRAMS)}")
    return names


def build_programs(config, mesh, policy, names) -> list:
    progs = [p for p in programs.training_programs(config, mesh, policy) if p.name in names]
    if any(n.startswith("rollout") for n in names):
        from agro_jax.plan import rollout

        held = programs.rollout_held_bytes(config, mesh, policy)
        progs += [p for p in rollout.rollout_programs(config, mesh, policy, held) if p.name in names]
    return progs


def plan(config, topology_name: str, names=PROGRAMS, log=print) -> dict:
    """Compiles the selected programs of `config` for the slice; returns a JSON-able report."""
    from agro_jax.scale.sharding import make_mesh

    topology = topologies.parse_topology(topology_name)
    if jax.config.jax_platforms is None:  # nothing runs on a device: keep JAX off any attached TPU
        jax.config.update("jax_platforms", "cpu")
    devices = topologies.topology_devices(topology)
    try:
        mesh = make_mesh(config.mesh, devices)
    except ValueError as e:
        raise UsageError(f"config.mesh.shape on {topology.name} ({len(devices)} chips): {e}") from None
    policy = programs.abstract_policy(config, mesh)
    graphdef, trained, frozen, rest, cfg, source = policy
    chip = topology.chip
    log(f"{topology.name}: {topology.topology_name}, {len(devices)} chips ({chip.kind}: {_gib(chip.hbm_bytes)} GiB "
        f"HBM budget, {chip.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16), mesh {dict(mesh.shape)}")  # fmt: skip
    n_trained, n_frozen = programs.param_count(trained), programs.param_count(frozen)
    log(f"model from {source}: {cfg.family}, {cfg.num_layers} layers, hidden {cfg.hidden_size}, vocab "
        f"{cfg.vocab_size}; {_count(n_trained + n_frozen)} params ({_count(n_trained)} trained), "
        f"{cfg.dtype} compute over {cfg.param_dtype} params, remat {cfg.remat}, logits_chunk {cfg.logits_chunk}, "
        f"scan_layers {cfg.scan_layers}")  # fmt: skip
    results = []
    for prog in build_programs(config, mesh, policy, names):
        log(f"compiling {prog.name} ({prog.shape}) ...")
        results.append(programs.measure(prog, mesh, chip.hbm_bytes))
    table = format_table(results, topology)
    log(table)
    log(f"per chip; in use = args + temp + out - alias (XLA's allocation for the program); +held = training state in "
        f"HBM that is not an argument (Adam state, the KL reference copy); total vs the {_gib(chip.hbm_bytes)} GiB "
        f"budget; TFLOP/chip = matmul FLOPs per optimizer step (decode: per token); step >= s: at peak")  # fmt: skip
    for r in results:
        if not r.fits:
            why = f" (compiler: {r.error})" if r.error else ""
            log(f"does not fit: {r.name} needs {_gib(r.total_bytes)} GiB per chip of {_gib(chip.hbm_bytes)}{why}; "
                f"lower it with {r.knobs}, or plan a larger slice")  # fmt: skip
    return {
        "topology": topology.name,
        "topology_name": topology.topology_name,
        "chips": len(devices),
        "hbm_bytes": chip.hbm_bytes,
        "peak_bf16_flops": chip.peak_bf16_flops,
        "mesh": dict(mesh.shape),
        "model_source": source,
        "params": {"trained": n_trained, "frozen": n_frozen},
        "programs": [vars(r) for r in results],
        "table": table,
        "fits": all(r.fits for r in results),
    }


def plan_main(config, args) -> int:
    t0 = time.perf_counter()
    report = plan(config, args.topology, _select(args.programs))
    report["wall_s"] = time.perf_counter() - t0
    if args.json:
        path = pathlib.Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1))
    return 0 if report["fits"] else NOT_FIT
