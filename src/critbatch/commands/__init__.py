"""The CLI's subcommands, and the output helpers they share.

`COMMANDS` names every subcommand and its module; each module's `register(subparsers)` adds
it and sets `func`. `func(args) -> int` returns the exit code; bad input raises
`critbatch.errors.InputError`, which the CLI turns into one line and exit code 2.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

# Subcommand -> its module, in `critbatch --help` order; imported when the parser is built.
COMMANDS: dict[str, str] = {
    "estimate": "critbatch.commands.estimate",
    "analyze": "critbatch.commands.analyze",
    "run": "critbatch.commands.run",
    "report": "critbatch.commands.report",
    "check-trainer": "critbatch.commands.check_trainer",
}


def print_json(obj: Any) -> None:
    """One JSON document on stdout; NaN and infinity are not JSON, so they become null."""
    print(json.dumps(_json_safe(obj), indent=2, sort_keys=False))


def _json_safe(obj: Any) -> Any:
    """`obj` with every NaN and infinity, however deep, replaced by None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def short_number(value: float | None, digits: int = 4) -> str:
    """A number for a table: integers as integers, others to `digits` significant figures
    (exponent form when large); `-` when there is none."""
    if value is None:
        return "-"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.{digits}g}"


def stdout_console() -> Console:
    """A rich console on the current stdout (tests swap sys.stdout); rich loads lazily."""
    from rich.console import Console

    return Console(file=sys.stdout, highlight=False)


def silence_stdout() -> None:
    """Point stdout at /dev/null once its reader is gone (`critbatch ... | head`), so that the
    interpreter's last flush fails no more."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
