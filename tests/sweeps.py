"""The one factory of test sweep manifests: a base sweep with its name, spec fields and trainer
fields replaced. Every subsystem's tests build their CriticalBatchSweep manifests here."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

# The small valid sweep of the operator's tests: the built-in digits, six batch sizes, two seeds.
BASE: dict = yaml.safe_load(
    (Path(__file__).resolve().parent / "operator" / "sweep.yaml").read_text()
)

# Only the fields a sweep must have: everything else is the CRD's and the trainer's default.
MINIMAL: dict = {
    "apiVersion": "critbatch.dev/v1alpha1", "kind": "CriticalBatchSweep",
    "metadata": {"name": "m"},
    "spec": {"trainer": {"image": "t:1"}, "batchSizes": [8, 2],
             "target": {"fidThreshold": 70, "maxSteps": 100}},
}


def sweep_manifest(name: str | None = None, *, base: Mapping[str, Any] = BASE,
                   trainer: Mapping[str, Any] | None = None, **spec: Any) -> dict:
    """A copy of `base` named `name` (the base's name when None), with the top-level `spec`
    fields replaced and then the `trainer` fields replaced within spec.trainer."""
    body = copy.deepcopy(dict(base))
    if name is not None:
        body["metadata"]["name"] = name
    body["spec"].update(copy.deepcopy(spec))
    if trainer:
        body["spec"]["trainer"].update(copy.deepcopy(dict(trainer)))
    return body
