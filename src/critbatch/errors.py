"""The one error type that means "the user's input is wrong": the CLI turns it into exit code 2."""


class InputError(ValueError):
    """Bad input; the message starts with the offending field, e.g. ``spec.batchSizes[2]: ...``."""
