"""The small valid sweep of the operator's tests, and variants of it for spec, CRD and planner."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

BASE = yaml.safe_load(
    (Path(__file__).resolve().parent / "operator" / "sweep.yaml").read_text()
)


def manifest(**spec) -> dict:
    """The base sweep with these top-level spec fields replaced."""
    body = copy.deepcopy(BASE)
    body["spec"].update(spec)
    return body


def with_trainer(**trainer) -> dict:
    """The base sweep with these spec.trainer fields replaced."""
    body = copy.deepcopy(BASE)
    body["spec"]["trainer"].update(trainer)
    return body
