"""Pinned CPU numerics (`--reproducible-cpu`) and the trial's `hardware` object.

PyTorch, MKL and oneDNN each pick kernels for the CPU they find, and the kernels sum in
different orders, so the same seed reaches different FIDs, and sometimes another N(b), on
another x86 CPU family. Pinned: ATen's portable kernels, MKL's conditional numerical
reproducibility branch for any x86 CPU, and no oneDNN or NNPACK convolutions (ATen's own,
through MKL's GEMM). The environment part must be in place before torch is imported;
docs/trainer.md says what this does and does not guarantee.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from typing import Any

from critbatch.provenance import cpu_model, short_text
from critbatch_trainer.settings import ConfigError

REPRODUCIBLE_ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    # oneDNN is off for convolutions; any other op that still reaches it stays portable too.
    "ONEDNN_MAX_CPU_ISA": "SSE41",
}
PIN_FLAG = "reproducible-cpu"


def pinned(environ: MutableMapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return all(env.get(k) == v for k, v in REPRODUCIBLE_ENV.items())


def pin_environment(environ: MutableMapping[str, str] | None = None) -> None:
    """Set the pinning variables; too late once torch is loaded (each library reads them once)."""
    env = os.environ if environ is None else environ
    if pinned(env):
        return
    if "torch" in sys.modules:
        raise ConfigError(f"{PIN_FLAG}: torch was imported before the CPU numerics could be "
                          "pinned: run critbatch-trainer as a process of its own, or set "
                          + " ".join(f"{k}={v}" for k, v in REPRODUCIBLE_ENV.items())
                          + " in its environment")
    env.update(REPRODUCIBLE_ENV)


def pin_torch() -> None:
    """Route convolutions through ATen and check that the environment took effect."""
    import torch

    if not pinned() or torch.backends.cpu.get_cpu_capability() != "DEFAULT":
        raise ConfigError(f"{PIN_FLAG}: the CPU numerics are not pinned in this process (torch "
                          f"dispatches {torch.backends.cpu.get_cpu_capability()}): run "
                          "critbatch-trainer as a process of its own")
    torch.backends.mkldnn.enabled = False
    torch.backends.nnpack.set_flags(False)


def hardware(device: Any, reproducible: bool) -> dict[str, Any]:
    """Where the trial runs, in bounded strings: a group's 8 results share 4 KiB."""
    import torch

    info: dict[str, Any] = {"device": device.type, "cpu": cpu_model(),
                            "isa": torch.backends.cpu.get_cpu_capability()}
    if device.type == "cuda":
        info["gpu"] = short_text(torch.cuda.get_device_name(device))
    info["torch"] = short_text(torch.__version__)
    info["threads"] = torch.get_num_threads()
    info["reproducible"] = reproducible
    return info
