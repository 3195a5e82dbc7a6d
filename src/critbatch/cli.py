"""`critbatch`: the command line. `critbatch.commands.COMMANDS` lists the subcommands."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from collections.abc import Sequence
from typing import NoReturn

from critbatch.commands import COMMANDS, silence_stdout
from critbatch.errors import InputError, OutputError

PROG = "critbatch"


def _version() -> str:
    try:
        return importlib.metadata.version("critbatch")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors, like every other bad input (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser with every subcommand of `COMMANDS`; ImportError if a module is missing."""
    parser = _Parser(
        prog=PROG,
        description="Find the critical batch size b* of TTUR GAN training: measure it with a "
        "sweep of batch sizes, fit it, or estimate it for other optimizers (Proposition 3.4 of "
        "Sato & Iiduka, ICML 2023).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; exit code 2 and one line on stderr for bad input."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse has printed already
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args))
    except InputError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OutputError as exc:  # a full disk: the input was fine, the machine was not
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `critbatch ... | head`: the reader left, nothing to report
        silence_stdout()
        return 141


if __name__ == "__main__":
    sys.exit(main())
