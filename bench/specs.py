"""What `python -m bench.run --model M` trains: the trainer's flags, the default batch sizes and
the baseline of each model, so that the timing code names no model.

GPU: the paper's settings (docs/science.md). CPU: sizes a shared 2-core machine runs in
minutes (BigGAN at 32x32, width 16); `--image-size` and `--width` override either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench import baseline
from bench.baseline_biggan import BigGanBaseline
from bench.baseline_wgan import WganGpBaseline

MODELS = ("dcgan", "wgan-gp", "biggan")
Step = Callable[[], None]


@dataclass(frozen=True, kw_only=True)
class Setup:
    """One model's benchmark settings; `trainer_flags` builds "ours" with the same ones."""

    model: str
    image_size: int
    width: int
    z_dim: int
    lr_g: float
    lr_d: float
    sizes: tuple[int, ...]
    attention_res: int = 0

    def trainer_flags(self) -> list[str]:
        """Flags over `bench.run.build_trial`'s DCGAN defaults (later flags win)."""
        flags = ["--model", self.model, "--image-size", str(self.image_size),
                 "--width", str(self.width), "--z-dim", str(self.z_dim),
                 "--lr-g", str(self.lr_g), "--lr-d", str(self.lr_d)]
        if self.model == "biggan":
            flags += ["--attention-res", str(self.attention_res)]
        return flags

    def baseline(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 device: torch.device, workers: int) -> Step:
        """One step of this model's paper-style baseline per call."""
        if self.model == "wgan-gp":
            return WganGpBaseline(images, batch_size, device, workers, width=self.width,
                                  z_dim=self.z_dim, lr_g=self.lr_g, lr_d=self.lr_d).step
        if self.model == "biggan":
            return BigGanBaseline(images, labels, batch_size, device, workers,
                                  width=self.width, z_dim=self.z_dim,
                                  num_classes=int(labels.max()) + 1,
                                  attention_res=self.attention_res, lr_g=self.lr_g,
                                  lr_d=self.lr_d).step
        return baseline.BaselineTrainer(images, batch_size, device, workers,
                                        lr_g=self.lr_g, lr_d=self.lr_d).step


def _powers(lo: int, hi: int) -> tuple[int, ...]:
    return tuple(2 ** k for k in range(lo, hi + 1))


def setup(model: str, gpu: bool, *, image_size: int | None = None,
          width: int | None = None) -> Setup:
    """The benchmark settings of `model` on a GPU or the CPU."""
    if model == "biggan":
        size = image_size or (128 if gpu else 32)
        # Attention at half the resolution, as the paper's 64 at 128.
        return Setup(model=model, image_size=size, width=width or (96 if gpu else 16),
                     z_dim=120, lr_g=1e-4, lr_d=4e-4, attention_res=size // 2,
                     sizes=_powers(1, 11) if gpu else _powers(1, 3))
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}")
    # DCGAN and WGAN-GP: the paper's DCGAN networks at 64x64, z 100, width 64.
    return Setup(model=model, image_size=image_size or 64, width=width or 64, z_dim=100,
                 lr_g=1e-4, lr_d=3e-4, sizes=_powers(1, 11) if gpu else _powers(1, 5))
