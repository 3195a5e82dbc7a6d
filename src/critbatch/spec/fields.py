"""Typed readers of a manifest's fields: each returns the value or raises a SpecError whose
message starts with the field's path (``spec.target.maxSteps: must be >= 1, got 0``)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from critbatch.errors import InputError

# Dot-separated DNS-1123 labels, as the API server checks object names (and the CRD's pattern).
_LABEL_RE = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = re.compile(rf"^{_LABEL_RE}(\.{_LABEL_RE})*$")
DNS1123_LABEL = re.compile(rf"^{_LABEL_RE}$")


class SpecError(InputError):
    """A sweep manifest the project cannot run; the message starts with the field's path."""


def field_error(path: str, what: str) -> SpecError:
    return SpecError(f"{path}: {what}")


def is_integer(value: Any) -> bool:
    """A finite whole number, as YAML may spell it (2 or 2.0), and not a boolean."""
    return (not isinstance(value, bool) and isinstance(value, int | float)
            and math.isfinite(value) and int(value) == value)


def mapping_field(value: Any, path: str, *, default: Mapping[str, Any] | None = None) -> dict:
    """A copy of the mapping at `path`; `default` when the field is unset and has one."""
    if value is None and default is not None:
        return dict(default)
    if not isinstance(value, Mapping):
        raise field_error(path, f"must be a mapping, got {type(value).__name__}")
    return dict(value)


def list_field(value: Any, path: str) -> list:
    """The list at `path`, empty when unset."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise field_error(path, f"must be a list, got {type(value).__name__}")
    return value


def check_known(obj: Mapping[str, Any], path: str, known: Sequence[str]) -> None:
    """Refuse a key the schema does not have (as `kubectl --validate=strict` would)."""
    for key in obj:
        if key not in known:
            raise field_error(f"{path}.{key}",
                              f"unknown field (expected one of {', '.join(known)})")


def _present(obj: Mapping[str, Any], key: str, path: str, required: bool) -> bool:
    """Whether `key` holds a value; a missing required one is an error naming the field."""
    if key in obj and obj[key] is not None:
        return True
    if required:
        raise field_error(path, "required")
    return False


def int_field(
    obj: Mapping[str, Any], key: str, path: str, *, default: int | None = None,
    required: bool = False, lo: int | None = None, hi: int | None = None,
) -> int | None:
    """`obj[key]` as an integer within [lo, hi]; `default` when unset."""
    p = f"{path}.{key}"
    if not _present(obj, key, p, required):
        return default
    v = obj[key]
    if not is_integer(v):
        raise field_error(p, f"must be an integer, got {v!r}")
    v = int(v)
    if lo is not None and v < lo:
        raise field_error(p, f"must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise field_error(p, f"must be <= {hi}, got {v}")
    return v


def finite_float_field(
    obj: Mapping[str, Any], key: str, path: str, *, required: bool = False,
    gt: float | None = None, ge: float | None = None, lt: float | None = None,
    le: float | None = None,
) -> float | None:
    """`obj[key]` as a finite float within the given bounds; None when unset."""
    p = f"{path}.{key}"
    if not _present(obj, key, p, required):
        return None
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise field_error(p, f"must be a finite number, got {v!r}")
    v = float(v)
    for holds, bound, op in ((gt is None or v > gt, gt, ">"), (ge is None or v >= ge, ge, ">="),
                             (lt is None or v < lt, lt, "<"), (le is None or v <= le, le, "<=")):
        if not holds:
            raise field_error(p, f"must be {op} {bound:g}, got {v:g}")
    return v


def str_field(
    obj: Mapping[str, Any], key: str, path: str, *, default: str | None = None,
    required: bool = False, choices: Sequence[str] | None = None, max_len: int | None = None,
) -> str | None:
    """`obj[key]` as a string, one of `choices` when given; `default` when unset."""
    p = f"{path}.{key}"
    if not _present(obj, key, p, required):
        return default
    v = obj[key]
    if not isinstance(v, str):
        raise field_error(p, f"must be a string, got {v!r}")
    if choices is not None and v not in choices:
        raise field_error(p, f"must be one of {', '.join(choices)}, got {v!r}")
    if max_len is not None and len(v) > max_len:
        raise field_error(p, f"must be at most {max_len} characters")
    return v


def bool_field(obj: Mapping[str, Any], key: str, path: str, *, default: bool = False) -> bool:
    """`obj[key]` as true or false (not a truthy string); `default` when unset."""
    if not _present(obj, key, f"{path}.{key}", False):
        return default
    if not isinstance(obj[key], bool):
        raise field_error(f"{path}.{key}", f"must be true or false, got {obj[key]!r}")
    return obj[key]


def str_map_field(value: Any, path: str) -> dict[str, str]:
    """A string-to-string mapping (labels, annotations, a node selector), empty when unset."""
    m = mapping_field(value, path, default={})
    for k, v in m.items():
        if not isinstance(v, str):
            raise field_error(f"{path}.{k}", f"must be a string, got {v!r}")
    return m
