"""The error types the CLI turns into one line and an exit code."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input; the message starts with the offending field, e.g. ``spec.batchSizes[2]: ...``.

    The CLI prints it as one line and exits with code 2.
    """


class OutputError(Exception):
    """Output that cannot be written once a run is under way (a full disk): one line, exit 1."""
