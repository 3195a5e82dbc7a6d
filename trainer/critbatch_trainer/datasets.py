"""Real datasets read from a path (ImageFolder, LSUN, CelebA) and their deterministic transforms.

The transforms are the paper's (resize, center crop), so the DataLoader path and a resident
dataset (decoded once to uint8, critbatch_trainer.resident) serve the same images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels k -> 2k/255 - 1; on the CPU bit for bit what ToTensor + Normalize(0.5, 0.5)
    give, so a resident dataset trains on exactly the DataLoader path's values."""
    return x.float() / 127.5 - 1


def labels_of(y: object, n: int) -> torch.Tensor:
    """A batch's labels as int64, or zeros for a dataset without them."""
    if isinstance(y, torch.Tensor) and y.dim() == 1 and y.dtype == torch.int64:
        return y
    return torch.zeros(n, dtype=torch.int64)


def num_classes(ds: object) -> int:
    """The classes of a torchvision dataset; 1 for one without classes."""
    classes = getattr(ds, "classes", None)
    return max(1, len(classes)) if classes else 1


def transform(image_size: int, channels: int, *, uint8: bool) -> Callable[[Any], torch.Tensor]:
    """The paper's transforms: resize, center crop, then scale to [-1, 1], or stop at the uint8
    pixels (what a resident dataset stores; `to_unit` scales them)."""
    from torchvision import transforms as T

    steps = [T.Resize(image_size), T.CenterCrop(image_size)]
    if channels == 1:
        steps.append(T.Grayscale(1))
    if uint8:
        steps.append(T.PILToTensor())
    else:
        steps += [T.ToTensor(), T.Normalize([0.5] * channels, [0.5] * channels)]
    return T.Compose(steps)


def open_dataset(dataset: str, path: str, lsun_classes: str) -> torch.utils.data.Dataset:
    """A torchvision dataset of (PIL image, label) without transforms."""
    import torchvision.datasets as dsets

    if dataset == "imagefolder":
        return dsets.ImageFolder(path)
    if dataset == "lsun":
        return dsets.LSUN(path, classes=lsun_classes.split(","))
    if dataset == "celeba":
        return dsets.CelebA(path, split="train", target_type=[], download=False)
    raise ValueError(f"dataset: unknown {dataset!r}")


class Transformed(torch.utils.data.Dataset):
    """(transform(image), label) of a torchvision dataset; label 0 where it has none (CelebA)."""

    def __init__(self, inner: torch.utils.data.Dataset,
                 transform: Callable[[Any], torch.Tensor]) -> None:
        self.inner, self.transform = inner, transform

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.inner[i]
        return self.transform(image), (label if isinstance(label, int) else 0)
