"""A parsed CriticalBatchSweep as frozen plain data, and the settings derived from it.

Every field holds its value with the CRD's defaults applied; a None means "the trainer's
default" (docs/contracts.md) where a field's comment says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from critbatch.protocol import DEFAULT_METRIC
from critbatch.science import OptimizerSetting
from critbatch.vocabulary import (
    KNOWN_DATASET_SIZES,
    Goal,
    OptimizerSide,
    TrialKey,
    default_eval_every,
)

GROUP = "critbatch.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "CriticalBatchSweep"
PLURAL = "criticalbatchsweeps"
MAX_BATCH = 1 << 20
# The model and dataset name of a sweep whose trials run the user's own command: critbatch
# knows neither, so nothing model- or dataset-specific applies to it.
CUSTOM = "custom"


@dataclass(frozen=True, kw_only=True)
class Dataset:
    name: str = "digits"
    path: str | None = None
    pvc: str | None = None
    size: int | None = None

    @property
    def known_size(self) -> int | None:
        """|S| when the spec says it or the dataset is embedded with a fixed size."""
        return self.size if self.size is not None else KNOWN_DATASET_SIZES.get(self.name)


@dataclass(frozen=True)
class Inception:
    """Inception weights: `file` relative to the root of claim `pvc`, or an absolute path."""

    pvc: str | None
    file: str


@dataclass(frozen=True)
class Checkpoints:
    """Persistent checkpoints: claim `pvc` holds one directory per trial, named after its Job,
    so a retried pod (a new pod) resumes instead of starting over."""

    pvc: str


@dataclass(frozen=True, kw_only=True)
class PodTemplate:
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] | None = None
    priority_class_name: str | None = None
    runtime_class_name: str | None = None
    service_account_name: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    volumes: tuple[Mapping[str, Any], ...] = ()
    volume_mounts: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, kw_only=True)
class Trainer:
    """A trial's program: the built-in GAN trainer, or the user's own `command` speaking the
    trial protocol (docs/trial-protocol.md), for which the GAN fields keep their defaults."""

    image: str | None = None  # None: the operator's default trainer image
    image_pull_policy: str | None = None
    command: tuple[str, ...] = ()  # empty: the built-in trainer
    model: str = "dcgan"
    image_size: int | None = None
    channels: int | None = None
    # None: the trainer's default for the model, which for BigGAN is not the paper's network.
    width: int | None = None
    z_dim: int | None = None
    ema_start: int | None = None
    dataset: Dataset = field(default_factory=Dataset)
    inception: Inception | None = None
    device: str = "auto"
    gpus: int = 1
    # Data-parallel trials (docs/distributed.md): `nodes` pods of `processes_per_node` worker
    # processes each share one trial's global batch. None: one process per GPU (at least 1).
    nodes: int = 1
    processes: int | None = None
    resources: Mapping[str, Mapping[str, str | int]] = field(default_factory=dict)
    checkpoint_every: int = 0
    checkpoints: Checkpoints | None = None  # None: checkpoints die with the pod (emptyDir)
    backoff_limit: int = 2
    active_deadline_seconds: int | None = None
    env: tuple[tuple[str, str], ...] = ()
    pod_template: PodTemplate = field(default_factory=PodTemplate)
    cuda_graph: bool = False
    micro_batch: int | None = None  # samples per forward and backward pass; None: the batch
    recompute_activations: bool = False
    fused_attention: bool = False
    bf16: bool = False
    reproducible_cpu: bool = False

    @property
    def custom(self) -> bool:
        """Whether trials run the user's command rather than the built-in trainer."""
        return bool(self.command)

    @property
    def processes_per_node(self) -> int:
        """Worker processes per node: spec.trainer.processes, else one per GPU; a custom
        trainer is one process, which starts its own on its GPUs."""
        if self.custom:
            return 1
        return self.processes if self.processes is not None else max(1, self.gpus)

    @property
    def world_size(self) -> int:
        """Worker processes of one trial in all; each trains on batch_size / world_size."""
        return self.nodes * self.processes_per_node


@dataclass(frozen=True, kw_only=True)
class Optimizer:
    name: str
    generator: OptimizerSide
    discriminator: OptimizerSide

    def setting(self) -> OptimizerSetting:
        """The generator's setting, which is what Proposition 3.4 speaks of."""
        g = self.generator
        return OptimizerSetting(self.name, g.learning_rate, g.beta1, g.beta2)


@dataclass(frozen=True, kw_only=True)
class Target:
    """A trial is done at the first evaluation whose `metric` meets `threshold` in the
    direction of `goal` (N(b) is that step), or censored at `max_steps`."""

    threshold: float
    max_steps: int
    metric: str = DEFAULT_METRIC
    goal: Goal = Goal.minimize
    eval_every: int | None = None  # None: the trainer's default for the dataset
    eval_samples: int | None = None  # the built-in trainer's only


@dataclass(frozen=True)
class Pruning:
    sfo_bound: bool = True


class StrategyType(StrEnum):
    """How trials are chosen: every batch size and seed, or where the answer is still open."""

    grid = "grid"
    adaptive = "adaptive"


# The plausible set's level when spec.strategy.confidence is unset: a grid reports at 95 %,
# an adaptive sweep stops adding trials once its most probable batch size holds 90 %.
DEFAULT_CONFIDENCE = {StrategyType.grid: 0.95, StrategyType.adaptive: 0.9}


@dataclass(frozen=True, kw_only=True)
class Strategy:
    """`max_trials` caps the trials an adaptive sweep starts (None: the whole grid x seeds)."""

    type: StrategyType = StrategyType.grid
    confidence: float = DEFAULT_CONFIDENCE[StrategyType.grid]
    max_trials: int | None = None


@dataclass(frozen=True, kw_only=True)
class EstimateTarget:
    optimizer: str
    learning_rate: float
    beta1: float
    beta2: float
    name: str | None = None
    dataset_size: int | None = None
    generator_params: int | None = None

    def setting(self) -> OptimizerSetting:
        return OptimizerSetting(self.optimizer, self.learning_rate, self.beta1, self.beta2)


@dataclass(frozen=True, kw_only=True)
class Reference:
    sweep: str | None = None
    noise_ratio: float | None = None
    generator_params: int | None = None
    dataset_size: int | None = None


class MetricsSource(StrEnum):
    """Where trial progress is read: Prometheus when one is known (auto), always, or never."""

    auto = "auto"
    prometheus = "prometheus"
    direct = "direct"


@dataclass(frozen=True, kw_only=True)
class Metrics:
    source: MetricsSource = MetricsSource.auto
    prometheus_url: str | None = None
    linger_seconds: int = 30


@dataclass(frozen=True, kw_only=True)
class Sweep:
    """A parsed, defaulted, validated CriticalBatchSweep."""

    name: str
    namespace: str
    generation: int
    uid: str | None
    trainer: Trainer
    optimizer: Optimizer | None  # None: a custom trainer, whose optimizer the spec does not set
    batch_sizes: tuple[int, ...]
    seeds: int
    target: Target
    parallelism: int = 4
    pruning: Pruning = field(default_factory=Pruning)
    estimate: tuple[EstimateTarget, ...] = ()
    reference: Reference | None = None
    metrics: Metrics = field(default_factory=Metrics)
    queue_name: str | None = None
    trials_per_gpu: int = 1
    strategy: Strategy = field(default_factory=Strategy)

    def trials(self) -> list[TrialKey]:
        """Every trial the sweep may run, batch size ascending, then seed (an adaptive sweep
        starts those of them its planner chooses)."""
        return [TrialKey(b, s) for b in sorted(self.batch_sizes) for s in range(self.seeds)]


def evaluation_interval(sweep: Sweep) -> int:
    """Steps between a trial's evaluations of the target metric: a reached trial crossed the
    threshold within the last such interval."""
    return sweep.target.eval_every or default_eval_every(sweep.trainer.dataset.name)


def resume_checkpoint_every(sweep: Sweep) -> int:
    """The checkpoint period where a restart resumes: spec.trainer.checkpointEvery, else one
    checkpoint per evaluation, so a retry never starts over."""
    return sweep.trainer.checkpoint_every or evaluation_interval(sweep)
