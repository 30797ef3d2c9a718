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


def set_by_path(config: ml_collections.ConfigDict, key: str, raw: str) -> None:
    """Sets `a.b.c` in `config` from the string `raw`; unknown keys raise ConfigError with close matches."""
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            import difflib

            close = difflib.get_close_matches(key, _known_keys(config), n=3)
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
