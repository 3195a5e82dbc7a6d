"""Fréchet distance between feature statistics of generated and real images, in memory.

No image file is written: generated batches go straight through the feature extractor and
only the running mean and covariance are kept. Real statistics are computed once per
(dataset, resolution, extractor) and cached on disk.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from critbatch.files import atomic_write
from critbatch_trainer.extractors import Extractor


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians.

    tr((S1 S2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix S1^(1/2) S2 S1^(1/2), which has the same spectrum and needs no
    complex arithmetic (scipy's sqrtm on S1 S2 can return spurious imaginary parts).
    """
    return FrechetReference(mu1, sigma1).distance(mu2, sigma2)


class FrechetReference:
    """One side of the distance (the real statistics) with its matrix square root cached.

    Each evaluation then costs two matrix products and one symmetric eigenvalue problem.
    """

    def __init__(self, mu: np.ndarray, sigma: np.ndarray) -> None:
        self.mu = np.asarray(mu, np.float64)
        self.sigma = np.atleast_2d(np.asarray(sigma, np.float64))
        if self.sigma.shape != (self.mu.size, self.mu.size):
            raise ValueError("frechet_distance: mean and covariance shapes do not match")
        self.root = _sqrt_psd(self.sigma)
        self.trace = float(np.trace(self.sigma))

    def distance(self, mu: np.ndarray, sigma: np.ndarray) -> float:
        mu = np.asarray(mu, np.float64)
        sigma = np.atleast_2d(np.asarray(sigma, np.float64))
        if mu.shape != self.mu.shape or sigma.shape != self.sigma.shape:
            raise ValueError("frechet_distance: mean and covariance shapes do not match")
        middle = self.root @ sigma @ self.root
        eig = np.linalg.eigvalsh((middle + middle.T) / 2)
        tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
        diff = mu - self.mu
        return float(max(diff @ diff + self.trace + np.trace(sigma) - 2 * tr_covmean, 0.0))


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of (N, D) features."""
    f = np.asarray(features, np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


class RunningStats:
    """Sum and sum of outer products of feature vectors, in float64, on the features' device.

    Accumulating where the features are keeps a GPU evaluation free of per-chunk copies and
    of a (D x D) product on the host per chunk.
    """

    def __init__(self) -> None:
        self.n = 0
        self.s: torch.Tensor | None = None
        self.ss: torch.Tensor | None = None

    def add(self, feats: torch.Tensor) -> None:
        f = feats.detach().to(torch.float64)
        if self.s is None or self.ss is None:
            self.s = torch.zeros(f.shape[1], dtype=torch.float64, device=f.device)
            self.ss = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64, device=f.device)
        self.n += len(f)
        self.s += f.sum(dim=0)
        self.ss.addmm_(f.T, f)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2 or self.s is None or self.ss is None:
            raise ValueError("statistics need at least two samples")
        s, ss = self.s.cpu().numpy(), self.ss.cpu().numpy()
        mu = s / self.n
        cov = (ss - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, cov


def feature_stats(extractor: Extractor, batches: Iterable[torch.Tensor],
                  device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    stats = RunningStats()
    for x in batches:
        stats.add(extractor(x.to(device)))
    return stats.result()


def eval_chunk(device: torch.device) -> int:
    """Generated images per extractor call: large on a GPU, where small calls waste it."""
    return 1000 if device.type == "cuda" else 250


@torch.no_grad()
def generated_stats(net: nn.Module, extractor: Extractor, z: torch.Tensor,
                    y: torch.Tensor | None, device: torch.device,
                    chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Feature statistics of net(z, y), generated and extracted chunk by chunk in memory."""
    chunk = chunk or eval_chunk(device)
    z, y = z.to(device), (None if y is None else y.to(device))
    stats = RunningStats()
    for i in range(0, len(z), chunk):
        stats.add(extractor(net(z[i:i + chunk], None if y is None else y[i:i + chunk])))
    return stats.result()


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "critbatch" / "fid-stats"


def cached_real_stats(cache_dir: str | Path | None, key: str,
                      compute: Callable[[], tuple[np.ndarray, np.ndarray]]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Real statistics from `cache_dir/key.npz`, computing and saving them when absent."""
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    path = directory / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as data:
                return data["mu"], data["sigma"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is recomputed
    mu, sigma = compute()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda fh: np.savez(fh, mu=mu, sigma=sigma), mode=0o600)
    except OSError:
        pass  # a read-only cache only costs recomputation
    return mu, sigma


def stats_key(data_key: str, extractor: Extractor, real_samples: int) -> str:
    return hashlib.sha256(
        f"{data_key}|{extractor.fingerprint}|{real_samples}".encode()).hexdigest()[:24]
