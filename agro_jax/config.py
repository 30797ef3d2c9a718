"""Config loading, big_vision style: `--config configs/x.py:arg` plus `--config.a.b=value` overrides.

A config file is a Python module with `get_config(arg: str | None) -> ml_collections.ConfigDict`. Overrides are
parsed with the type of the field they replace, so a typo or an unknown key fails loudly instead of silently
training the wrong thing.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
from collections.abc import Sequence

import ml_collections

from agro_jax.errors import UsageError


class ConfigError(UsageError):
    """A config file, spec or override is malformed; the message names the offending key."""


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Loads `path/to/file.py[:arg]` and returns its locked ConfigDict."""
    path_str, _, arg = spec.partition(":")
    path = pathlib.Path(path_str)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path_str!r} (from spec {spec!r})")
    module_spec = importlib.util.spec_from_file_location(f"_agro_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # the user's file: re-raise with its name attached
        raise ConfigError(f"config file {path_str!r} failed to import: {e!r}") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path_str!r} has no get_config(arg) function")
    config = module.get_config(arg or None)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path_str}:get_config must return an ml_collections.ConfigDict, got {type(config)}")
    config.lock()
    return config


def _parse_value(raw: str, current, key: str):
    """Parses `raw` into the type of `current` (the field's default)."""
    if current is None:
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw
    if isinstance(current, bool):
        if raw.lower() in ("1", "true", "yes"):
            return True
        if raw.lower() in ("0", "false", "no"):
            return False
        raise ConfigError(f"config.{key}: expected a bool, got {raw!r}")
    if isinstance(current, int | float) and not isinstance(current, bool):
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError) as e:
            raise ConfigError(f"config.{key}: expected a number, got {raw!r}") from e
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"config.{key}: expected a number, got {raw!r}")
        if isinstance(current, int) and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"config.{key}: expected an int, got {raw!r}")
        return type(current)(value)
    if isinstance(current, str):
        return raw
    if isinstance(current, tuple | list):
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError) as e:
            raise ConfigError(f"config.{key}: expected a {type(current).__name__}, got {raw!r}") from e
        if not isinstance(value, tuple | list):
            raise ConfigError(f"config.{key}: expected a {type(current).__name__}, got {raw!r}")
        return type(current)(value)
    raise ConfigError(f"config.{key}: cannot override a field of type {type(current).__name__} from the CLI")


def _known_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for name, value in config.items():
        keys.append(prefix + name)
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(_known_keys(value, prefix + name + "."))
    return keys


# Names other trainers (TRL, tunix, optax users) use, or short forms, for fields this config spells out.
ALIASES = {"lr": "learning_rate", "bs": "batch_size", "wd": "weight_decay", "temp": "temperature",
           "num_generations": "group_size", "kl_coef": "beta", "kl": "beta", "epsilon": "clip_low",
           "grad_accum": "grad_accum_steps", "accumulation_steps": "grad_accum_steps", "clip_norm": "grad_clip_norm",
           "max_grad_norm": "grad_clip_norm", "warmup": "warmup_steps", "max_steps": "steps", "num_steps": "steps",
           "n_layers": "num_layers", "layers": "num_layers", "vocab": "vocab_size", "dir": "data_dir"}  # fmt: skip


def _initials(name: str) -> str:
    return "".join(w[0] for w in name.split("_") if w)


def _leaf_score(typed: str, leaf: str) -> float:
    """How likely `typed` means the field `leaf`: alias, initials (lr), prefix, substring, then spelling."""
    import difflib

    if typed == leaf:
        return 5.0
    if ALIASES.get(typed) == leaf or typed == _initials(leaf):
        return 4.0
    if len(typed) >= 3 and (leaf.startswith(typed) or typed.startswith(leaf)):
        return 3.0
    if len(typed) >= 3 and (typed in leaf or leaf in typed):
        return 2.0
    ratio = difflib.SequenceMatcher(None, typed, leaf).ratio()
    return 1.0 + ratio if ratio >= 0.7 else 0.0


def suggest_keys(config: ml_collections.ConfigDict, key: str, n: int = 3) -> list[str]:
    """Known keys the unknown `key` most likely meant, best first: `grpo.optim.lr` -> grpo.optim.learning_rate."""
    import difflib

    parent, _, leaf = key.rpartition(".")
    scored = []
    for known in _known_keys(config):
        k_parent, _, k_leaf = known.rpartition(".")
        score = _leaf_score(leaf, k_leaf)
        if score:
            near = parent and k_parent and (k_parent.startswith(parent) or parent.startswith(k_parent))
            same = 2.0 if k_parent == parent else 1.0 if near else 0.0
            scored.append((score + same, known))
    scored.sort(key=lambda t: (-t[0], t[1]))
    best = [k for s, k in scored if s >= 3.0][:n]
    return best or difflib.get_close_matches(key, _known_keys(config), n=n)


def set_by_path(config: ml_collections.ConfigDict, key: str, raw: str) -> None:
    """Sets `a.b.c` in `config` from the string `raw`; unknown keys raise ConfigError with likely meant keys."""
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            close = suggest_keys(config, key)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key config.{key} (no field {'.'.join(parts[: i + 1])!r}){hint}")
        if i < len(parts) - 1:
            node = node[part]
    current = node[parts[-1]]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f"config.{key} is a section, not a field; override its fields one by one")
    with node.unlocked():
        node[parts[-1]] = _parse_value(raw, current, key)


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Applies `--config.a.b=value` (or `a.b=value`) strings in order."""
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        text = text[len("config.") :] if text.startswith("config.") else text
        key, sep, raw = text.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like --config.a.b=value")
        set_by_path(config, key, raw)
    return config


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The one way to get a config: file spec plus overrides."""
    return apply_overrides(load_config_file(spec), overrides)
