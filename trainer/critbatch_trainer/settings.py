"""One trial's settings (`TrainerConfig`), and the error a bad setting raises.

Every module of the trainer reads its settings from this record; `config` fills it from the
command line and a file, and `resolve` gives every unset field its default.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from critbatch.errors import InputError

PROG = "critbatch-trainer"
GROUP_SIZE_ENV = "CRITBATCH_GROUP_SIZE"  # set for the children of a trial group


class ConfigError(InputError):
    """Bad trainer configuration; the message starts with the flag name of the field."""


class Resident(StrEnum):
    """Whether a real dataset is decoded once and kept on the device (`--resident`)."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


def flag_name(field: str) -> str:
    """The command-line spelling of a field: `batch_size` -> `batch-size`."""
    return field.replace("_", "-")


@dataclass(frozen=True, kw_only=True)
class TrainerConfig:
    """One trial. None means "the default for this model/dataset/optimizer" (see `resolve`)."""

    batch_size: int
    fid_threshold: float
    max_steps: int
    model: str = "dcgan"
    dataset: str = "digits"
    data_path: str | None = None
    lsun_classes: str = "bedroom_train"
    image_size: int | None = None
    channels: int | None = None
    seed: int = 0
    optimizer: str = "adam"
    lr_g: float | None = None
    lr_d: float | None = None
    beta1_g: float | None = None
    beta2_g: float | None = None
    eps_g: float | None = None
    beta1_d: float | None = None
    beta2_d: float | None = None
    eps_d: float | None = None
    eval_every: int | None = None
    eval_samples: int | None = None
    real_samples: int = 50000
    extractor: str = "auto"
    allow_download: bool = False
    stats_cache: str | None = None
    width: int | None = None
    z_dim: int | None = None
    n_critic: int = 1
    micro_batch: int = 0
    gp_lambda: float = 10.0
    ema_decay: float = 0.9999
    ema_start: int = 1000
    attention_res: int | None = None
    gns_every: int = 10
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    metrics_port: int = 0
    metrics_host: str = "0.0.0.0"
    linger: float = 0.0
    sweep: str = "local"
    termination_log: str | None = None
    device: str = "auto"
    threads: int | None = None
    workers: int = 2
    resident: str = Resident.AUTO
    cuda_graph: bool = False
    recompute_activations: bool = False
    fused_attention: bool = False
    bf16: bool = False
    reproducible_cpu: bool = False
