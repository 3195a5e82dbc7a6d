"""The datasets shipped with the trainer's dependencies: no path, no download, no Inception.

scikit-learn's 8x8 digits and scikit-image's LFW faces, held in memory as one tensor in
[-1, 1] at the trial's resolution.
"""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F


@dataclass
class EmbeddedImages:
    """A small dataset held in memory as one tensor in [-1, 1]."""

    name: str
    images: torch.Tensor  # (N, C, H, W)
    labels: torch.Tensor  # (N,)
    num_classes: int


def _resize(images: np.ndarray, size: int, channels: int) -> torch.Tensor:
    """(N, h, w) in [0, 1] -> (N, channels, size, size) in [-1, 1], bilinear."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32))[:, None]
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=size < x.shape[-1])
    x = (x.clamp(0, 1) * 2 - 1).repeat(1, channels, 1, 1)
    return x.contiguous()


def _digits_table() -> np.ndarray:
    """scikit-learn's digits file (64 pixels and a label per row), read without importing
    scikit-learn, which costs seconds of every trial's start; its own loader otherwise."""
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as f:
                return np.loadtxt(f, delimiter=",")
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.c_[d.data, d.target]


def load_digits_images(size: int, channels: int = 1) -> EmbeddedImages:
    """scikit-learn's 1797 8x8 handwritten digits, upsampled; labels 0-9."""
    table = _digits_table()
    images = table[:, :-1].reshape(-1, 8, 8)
    return EmbeddedImages("digits", _resize(images / 16.0, size, channels),
                          torch.from_numpy(table[:, -1].astype(np.int64)), 10)


def load_lfw_subset(size: int, channels: int = 1, faces_only: bool = True) -> EmbeddedImages:
    """scikit-image's 25x25 LFW subset: 100 faces then 100 non-faces (label 1 = face)."""
    from skimage.data import lfw_subset

    raw = lfw_subset().astype(np.float32)
    if raw.max() > 1.0:
        raw = raw / 255.0
    labels = np.r_[np.ones(100), np.zeros(len(raw) - 100)].astype(np.int64)
    if faces_only:
        raw, labels = raw[:100], labels[:100]
    return EmbeddedImages("faces", _resize(raw, size, channels), torch.from_numpy(labels),
                          1 if faces_only else 2)


# The loader of each embedded dataset: (image size, channels) -> images.
EMBEDDED_LOADERS: dict[str, Callable[[int, int], EmbeddedImages]] = {
    "digits": load_digits_images,
    "faces": load_lfw_subset,
}
