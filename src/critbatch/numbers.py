"""Numbers read from outside or written into a status: one helper per meaning.

A status, a trainer's result and its metrics are JSON or YAML that a user's image or a hand
may have written, so readers take only real, finite numbers; writers round what they report
and write integral values as integers.
"""

from __future__ import annotations

import math
from typing import Any


def finite_float(value: Any) -> float | None:
    """A real number (not a bool, not numeric text) that is finite, as a float; else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def positive_int(value: Any) -> int | None:
    """A finite number > 0 as an int (a count: parameters, dataset size); else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if math.isfinite(value) and value > 0 else None


def json_number(value: float | None) -> float | int | None:
    """A finite value as a status writes it: integral ones as int; None, NaN, inf as None."""
    if value is None or not math.isfinite(float(value)):
        return None
    value = float(value)
    return int(value) if value.is_integer() else value


def significant(value: float | None, digits: int = 6) -> float | None:
    """`value` rounded to `digits` significant figures; None for None, NaN and inf."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def number_text(value: float) -> str:
    """A value as a message shows it: +Inf, -Inf, NaN, or %g."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:g}"
