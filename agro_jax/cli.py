"""`agro-sql` entry point. Each subcommand lives beside the code it runs and is imported only when used.

Every subcommand takes `--config path.py[:arg]` and any number of `--config.a.b=value` overrides.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> ("module:function", help). The function takes (config, args) and returns an exit code or None.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("agro_jax.pipeline:run_main", "the whole pipeline: factory, tokenizer, SFT, eval, GRPO, eval, report"),
    "sft": ("agro_jax.train.stages:sft_main", "cold-start SFT stage on the factory data; resumes its own checkpoints"),
    "grpo": ("agro_jax.train.stages:grpo_main", "GRPO stage: rollouts, rewards, updates; resumes its own checkpoints"),
    "sweep": ("agro_jax.sweep:sweep_main", "run or print a hyper-parameter sweep of another subcommand"),
    "eval": (
        "agro_jax.eval.evaluate:eval_main",
        "EX evaluation of predictions (or --gold-as-pred) on Spider/BIRD data",
    ),
    "report": ("agro_jax.eval.report:report_main", "write report.md + plots from a run folder's metrics"),
    "factory": ("data_factory.pipeline:factory_main", "build the verified synthetic TFDS dataset in <workdir>/factory"),
    "convert": ("agro_jax.model.hf_io:convert_main", "validate + re-export an HF Qwen checkpoint (--in/--out)"),
}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agro-sql", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in sorted(SUBCOMMANDS.items()):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", default="configs/tiny_cpu.py", help="config file spec: path.py[:arg]")
        p.add_argument("--workdir", default=None, help="overrides config.workdir")
    return parser


def main(argv: list[str] | None = None) -> int:
    from agro_jax.config import ConfigError, load_config

    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if a.startswith("--config.")]
    rest = [a for a in argv if not a.startswith("--config.")]
    parser = _build_parser()
    args, extra = parser.parse_known_args(rest)
    try:
        config = load_config(args.config, overrides)
        if args.workdir:
            with config.unlocked():
                config.workdir = args.workdir
    except ConfigError as e:
        parser.error(str(e))
    target, _ = SUBCOMMANDS[args.command]
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    args.extra = extra
    args.overrides = overrides  # the --config.* strings, for subcommands that spawn others (sweep)
    from agro_jax.scale.multihost import maybe_initialize_distributed

    maybe_initialize_distributed()  # no-op unless AGRO_* env vars ask for multi-host (launch_tpu.sh sets them)
    return int(func(config, args) or 0)


if __name__ == "__main__":
    sys.exit(main())
