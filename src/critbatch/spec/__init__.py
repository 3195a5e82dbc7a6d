"""The CriticalBatchSweep spec: the frozen data model (`model`), its typed field readers
(`fields`), the parser (`parse`, `parse_trainer`) and what a sweep may ask of the operator
(`policy`). Callers import the spec's public names from here; the dataclasses of a parsed
sweep's parts live in `critbatch.spec.model`."""

from critbatch.spec.fields import SpecError
from critbatch.spec.model import (
    API_VERSION,
    GROUP,
    KIND,
    MAX_BATCH,
    PLURAL,
    VERSION,
    MetricsSource,
    StrategyType,
    Sweep,
    evaluation_interval,
    resume_checkpoint_every,
)
from critbatch.spec.parse import parse_sweep
from critbatch.spec.policy import (
    JOB_MOUNT_PATHS,
    JOB_VOLUMES,
    POD_TEMPLATE_ALLOWANCES,
    check_pod_template,
    check_prometheus_url,
)

__all__ = [
    "API_VERSION", "GROUP", "JOB_MOUNT_PATHS", "JOB_VOLUMES", "KIND", "MAX_BATCH", "PLURAL",
    "POD_TEMPLATE_ALLOWANCES", "VERSION", "MetricsSource", "SpecError", "StrategyType", "Sweep",
    "check_pod_template", "check_prometheus_url", "evaluation_interval", "parse_sweep",
    "resume_checkpoint_every",
]
