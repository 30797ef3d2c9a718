"""The user-mistake exceptions every layer may raise (bottom level: imports nothing from the project).

`agro-sql` turns them into one line `agro-sql <command>: error: <message>` and exit code 2 (no traceback unless
`--debug` or AGRO_DEBUG=1), so a message names the bad input and what would be right:

    raise UsageError(f"--data {path}: no such directory; give a Spider/BIRD folder with dev.json")
"""

from __future__ import annotations


class UsageError(ValueError):
    """A bad flag, path, config value or input file: the message names it and what would be right."""


class MissingInputError(UsageError, FileNotFoundError):
    """A path the user gave (or a stage's input the workdir should hold) does not exist."""
