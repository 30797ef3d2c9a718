"""Hyper-parameter sweeps: `agro-sql sweep --config C --sweep configs/sweeps/x.py[:arg] [--stage S] [--dry-run]`.

A sweep file defines `get_sweep(arg) -> list[dict]`, each dict a set of config overrides (`{"grpo.beta": 0.01}`),
built with the big_vision-style helpers below:

    product(sweep("grpo.optim.learning_rate", [1e-4, 3e-4]), sweep("grpo.beta", [0.0, 0.01]))   # 4 variants
    zipit(sweep("grpo.group_size", [2, 4]), sweep("grpo.prompts_per_step", [16, 8]))              # 2 variants

Every variant is validated against the config up front (unknown key or wrong type = error naming the variant and
key), gets its own workdir `<workdir>/sweep/<NN>_<name>`, and runs as a subprocess `agro-sql <stage> ...`
(at most --max-parallel at once), or with --launcher tpu as one `launch_tpu.sh` job per variant. The commands are
always written to `<workdir>/sweep/commands.sh` (runs/<url>/sweep/ for a gs:// workdir); --dry-run prints them
and stops there.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import pathlib
import re
import shlex
import subprocess
import sys
import time

import tqdm

from agro_jax.config import ConfigError, load_config

# ---------------------------------------------------------------------------------------------- sweep algebra


def sweep(key: str, values) -> list[dict]:
    """One key over several values: [{key: v} for v in values]."""
    values = list(values)
    if not values:
        raise ValueError(f"sweep({key!r}, ...) got no values")
    return [{key: v} for v in values]


def product(*sweeps: list[dict]) -> list[dict]:
    """Cartesian product, the first sweep varying slowest."""
    return [_merge(combo) for combo in itertools.product(*sweeps)]


def zipit(*sweeps: list[dict]) -> list[dict]:
    """Element-wise merge of equally long sweeps."""
    lengths = {len(s) for s in sweeps}
    if len(lengths) > 1:
        raise ValueError(f"zipit needs sweeps of equal length, got lengths {[len(s) for s in sweeps]}")
    return [_merge(combo) for combo in zip(*sweeps)]


def chain(*sweeps: list[dict]) -> list[dict]:
    """Concatenation: the variants of every sweep, one after the other."""
    return [dict(d) for s in sweeps for d in s]


def _merge(dicts) -> dict:
    out: dict = {}
    for d in dicts:
        clash = set(out) & set(d)
        if clash:
            raise ValueError(f"sweep dimensions set the same key twice: {sorted(clash)}")
        out.update(d)
    return out


# ------------------------------------------------------------------------------------------------- variants


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str  # "03_learning_rate=0.0001,beta=0.01"; also the workdir's last component
    overrides: dict  # config key (no "config." prefix) -> python value
    workdir: str
    argv: tuple[str, ...]  # `agro-sql <stage> --config ... --workdir ...`


def load_sweep(spec: str) -> list[dict]:
    """Imports `path.py[:arg]` and returns its `get_sweep(arg)` list of override dicts."""
    path_str, _, arg = spec.partition(":")
    path = pathlib.Path(path_str)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path_str!r}")
    module_spec = importlib.util.spec_from_file_location(f"_agro_sweep_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise ConfigError(f"sweep file {path_str!r} has no get_sweep(arg) function")
    variants = module.get_sweep(arg or None)
    if not isinstance(variants, list) or not variants or not all(isinstance(v, dict) for v in variants):
        raise ConfigError(f"{path_str}:get_sweep must return a non-empty list of dicts, got {variants!r:.200}")
    return variants


def cli_value(value) -> str:
    """A python value as the override string config.py parses back into the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float | tuple | list) or value is None:
        return repr(value)
    raise ConfigError(f"sweep value {value!r} of type {type(value).__name__} cannot be passed on the command line")


def _clean_key(key: str) -> str:
    key = key[len("config.") :] if key.startswith("config.") else key
    if key == "workdir":
        raise ConfigError("a sweep must not set config.workdir: each variant gets <workdir>/sweep/<name>")
    return key


def variant_name(index: int, overrides: dict) -> str:
    """`NN_<leaf>=<value>,...`; a leaf name shared by two keys keeps its full dotted path."""
    keys = list(overrides)
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    parts = [f"{k if leaves.count(leaf) > 1 else leaf}={cli_value(overrides[k])}" for k, leaf in zip(keys, leaves)]
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", f"{index:02d}_" + ",".join(parts))[:120]


def expand(
    config_spec: str, base_overrides, sweep_spec: str, workdir: str, stage: str, dicts: list[dict] | None = None
) -> list[Variant]:
    """Sweep file -> validated variants. Each variant's full config is loaded exactly as its subprocess will."""
    dicts = load_sweep(sweep_spec) if dicts is None else dicts
    variants = []
    for i, raw in enumerate(dicts):
        overrides = {_clean_key(k): v for k, v in raw.items()}
        name = variant_name(i, overrides)
        cli = [f"--config.{k}={cli_value(v)}" for k, v in overrides.items()]
        try:
            load_config(config_spec, [*base_overrides, *cli])
        except ConfigError as e:
            raise ConfigError(f"sweep variant {i} {overrides}: {e}") from None
        wd = f"{str(workdir).rstrip('/')}/sweep/{name}"  # not pathlib: it would turn gs://b into gs:/b
        argv = ("agro-sql", stage, "--config", config_spec, *base_overrides, *cli, "--workdir", wd)
        variants.append(Variant(name, overrides, wd, argv))
    return variants


def tpu_command(variant: Variant, tpu_args: list[str], name_prefix: str) -> list[str]:
    """One launch_tpu.sh job for a variant: its own VM, the variant's overrides after `--`."""
    _, stage, _, config_spec, *rest = variant.argv
    vm = f"{name_prefix}-{variant.name[:2]}"
    return ["./launch_tpu.sh", "--name", vm, "--config", config_spec, "--stage", stage, *tpu_args, "--", *rest]


def local_sweep_dir(workdir: str) -> pathlib.Path:
    """Where commands.sh / summary.json go: <workdir>/sweep, or runs/<escaped url>/sweep for a gs:// workdir."""
    if "://" in str(workdir):
        return pathlib.Path("runs") / re.sub(r"[^A-Za-z0-9._-]+", "_", str(workdir)) / "sweep"
    return pathlib.Path(workdir) / "sweep"


def write_script(commands: list[list[str]], path: pathlib.Path) -> None:
    lines = ["#!/usr/bin/env bash", "# Generated by `agro-sql sweep`: one line per variant.", "set -euo pipefail"]
    lines += [shlex.join(c) for c in commands]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)


def run_commands(commands: list[list[str]], logs: list[pathlib.Path], max_parallel: int = 1) -> list[dict]:
    """Runs every command (a real subprocess each, at most `max_parallel` at once), stdout+stderr to its log.

    `agro-sql` as argv[0] runs as `python -m agro_jax.cli` of this interpreter (no PATH lookup needed), and
    `./launch_tpu.sh` as the repository's script.
    Returns [{returncode, seconds}] in input order; never stops early so one bad variant does not hide the rest.
    """
    if max_parallel < 1:
        raise ValueError(f"--max-parallel must be >= 1, got {max_parallel}")
    results: list[dict | None] = [None] * len(commands)
    pending = list(range(len(commands)))
    running: dict[int, tuple[subprocess.Popen, float, object]] = {}
    bar = tqdm.tqdm(total=len(commands), desc="sweep", dynamic_ncols=True)
    while pending or running:
        while pending and len(running) < max_parallel:
            i = pending.pop(0)
            cmd = list(commands[i])
            if cmd[0] == "agro-sql":
                cmd = [sys.executable, "-m", "agro_jax.cli", *cmd[1:]]
            elif cmd[0] == "./launch_tpu.sh":  # the repo's own script, wherever the sweep is started from
                cmd = ["bash", str(pathlib.Path(__file__).resolve().parents[1] / "launch_tpu.sh"), *cmd[1:]]
            logs[i].parent.mkdir(parents=True, exist_ok=True)
            log = open(logs[i], "w")  # noqa: SIM115 - closed when the process ends
            running[i] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), time.time(), log)
        for i, (proc, t0, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                results[i] = {"returncode": proc.returncode, "seconds": round(time.time() - t0, 2)}
                del running[i]
                bar.update(1)
        time.sleep(0.05)
    bar.close()
    return results


# ------------------------------------------------------------------------------------------------------ CLI


def sweep_arguments(p) -> None:
    p.add_argument("--sweep", required=True, help="sweep file spec path.py[:arg] defining get_sweep(arg)")
    p.add_argument("--stage", default="run", help="agro-sql subcommand each variant runs")
    p.add_argument("--dry-run", action="store_true", help="print (and write) the commands, run nothing")
    p.add_argument("--max-parallel", type=int, default=1, help="variants running at once (local launcher)")
    p.add_argument("--launcher", choices=("local", "tpu"), default="local", help="local subprocesses or TPU VMs")
    p.add_argument("--tpu-args", default="", help="launch_tpu.sh flags for --launcher tpu, e.g. '--zone Z ...'")
    p.add_argument("--tpu-name", default="agro-sweep", help="TPU VM name prefix (one VM per variant)")
    p.epilog = "example:\n  agro-sql sweep --sweep configs/sweeps/lr_beta.py:quick --stage grpo --dry-run"


def sweep_main(config, args) -> int:
    from agro_jax.cli import SUBCOMMANDS

    a = args
    if a.stage == "sweep" or a.stage not in SUBCOMMANDS:
        known = ", ".join(sorted(set(SUBCOMMANDS) - {"sweep"})) or "none registered"
        raise ConfigError(f"--stage {a.stage!r} is not a runnable subcommand (known: {known})")
    base_overrides = list(getattr(args, "overrides", []) or [])
    variants = expand(args.config, base_overrides, a.sweep, config.workdir, a.stage)
    if a.launcher == "tpu":
        commands = [tpu_command(v, shlex.split(a.tpu_args), a.tpu_name) for v in variants]
    else:
        commands = [list(v.argv) for v in variants]
    sweep_dir = local_sweep_dir(config.workdir)
    write_script(commands, sweep_dir / "commands.sh")
    print(f"sweep: {len(variants)} variants -> {sweep_dir / 'commands.sh'}")
    if a.dry_run:
        for c in commands:
            print(shlex.join(c))
        return 0
    logs = [sweep_dir / "logs" / f"{v.name}.log" for v in variants]  # local even when workdirs are gs://
    results = run_commands(commands, logs, a.max_parallel)
    summary = [
        {"name": v.name, "overrides": v.overrides, "workdir": v.workdir, "log": str(log), **r}
        for v, log, r in zip(variants, logs, results)
    ]
    (sweep_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=repr))
    for s in summary:
        print(f"{'ok ' if s['returncode'] == 0 else 'FAIL'} {s['seconds']:8.1f}s  {s['name']}  ({s['log']})")
    return int(any(s["returncode"] != 0 for s in summary))
