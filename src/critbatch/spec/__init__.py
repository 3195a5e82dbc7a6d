"""The CriticalBatchSweep spec: the frozen data model (`model`), its typed field readers
(`fields`), the parser (`parse`, `parse_trainer`) and what a sweep may ask of the operator
(`policy`). Callers import from here."""

from critbatch.spec.fields import SpecError
from critbatch.spec.model import (
    API_VERSION,
    DEFAULT_CONFIDENCE,
    GROUP,
    KIND,
    MAX_BATCH,
    PLURAL,
    VERSION,
    Checkpoints,
    Dataset,
    EstimateTarget,
    Inception,
    Metrics,
    MetricsSource,
    Optimizer,
    PodTemplate,
    Pruning,
    Reference,
    Strategy,
    StrategyType,
    Sweep,
    Target,
    Trainer,
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
    "API_VERSION", "DEFAULT_CONFIDENCE", "GROUP", "JOB_MOUNT_PATHS", "JOB_VOLUMES", "KIND",
    "MAX_BATCH", "PLURAL", "POD_TEMPLATE_ALLOWANCES", "VERSION", "Checkpoints", "Dataset",
    "EstimateTarget", "Inception", "Metrics", "MetricsSource", "Optimizer",
    "PodTemplate", "Pruning", "Reference", "SpecError", "Strategy", "StrategyType", "Sweep",
    "Target", "Trainer", "check_pod_template", "check_prometheus_url",
    "evaluation_interval", "parse_sweep", "resume_checkpoint_every",
]
