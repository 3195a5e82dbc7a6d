"""Fréchet distance between feature statistics of generated and real images, in memory.

No image file is written: generated batches go straight through the feature extractor and
only the running mean and covariance are kept. Real statistics are computed once per
(dataset, resolution, extractor) and cached on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

WEIGHTS_DIR = Path(__file__).parent / "weights"
INCEPTION_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                 "pt_inception-2015-12-05-6726825d.pth")


class ExtractorError(ValueError):
    """The extractor cannot be loaded (missing or malformed weights)."""


# ---------------------------------------------------------------------------------------------
# The distance
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Extractors
# ---------------------------------------------------------------------------------------------


class SmallClassifier(nn.Module):
    """A small CNN classifier of the embedded data; its hidden layer is the feature space."""

    def __init__(self, input_size: int = 16, channels: int = 1, num_classes: int = 10,
                 widths: tuple[int, ...] = (16, 32), features: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, size = channels, input_size
        for w in widths:
            layers += [nn.Conv2d(cin, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            cin, size = w, size // 2
        self.conv = nn.Sequential(*layers)
        self.hidden = nn.Linear(cin * size * size, features)
        self.head = nn.Linear(features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(self.conv(x).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))


@dataclass
class Extractor:
    """Maps images in [-1, 1] of any size and 1 or 3 channels to feature vectors."""

    name: str
    network: nn.Module
    input_size: int
    channels: int
    fingerprint: str

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[1] != self.channels:
            x = x.mean(dim=1, keepdim=True) if self.channels == 1 else x.repeat(1, 3, 1, 1)
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=x.shape[-1] > self.input_size)
        if isinstance(self.network, SmallClassifier):
            return self.network.features(x)
        return self.network(x)

    def to(self, device: torch.device) -> Extractor:
        self.network.to(device)
        if torch.device(device).type == "cuda":
            self.network.to(memory_format=torch.channels_last)  # cuDNN's fast NHWC kernels
        return self


def classifier_paths(name: str) -> tuple[Path, Path]:
    return WEIGHTS_DIR / f"{name}.pt", WEIGHTS_DIR / f"{name}.json"


def load_classifier(name: str) -> Extractor:
    """The shipped classifier of an embedded dataset ("digits" or "faces")."""
    weights, meta_path = classifier_paths(name)
    if not weights.is_file() or not meta_path.is_file():
        raise ExtractorError(
            f"extractor: the {name} classifier's weights are missing from the package; "
            f"rebuild them with trainer/scripts/train_extractors.py"
        )
    meta = json.loads(meta_path.read_text())
    net = SmallClassifier(meta["input_size"], meta["channels"], meta["num_classes"],
                          tuple(meta["widths"]), meta["features"])
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net.eval()
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    return Extractor(name, net, meta["input_size"], meta["channels"], f"{name}-{digest}")


class _Conv(nn.Module):
    """Conv + batch norm (eps 1e-3) + ReLU, named as torchvision's BasicConv2d."""

    def __init__(self, cin: int, cout: int, **kw: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _pool_avg(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool leaves padded zeros out of the mean.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):
    def __init__(self, cin: int, pool: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, kernel_size=1)
        self.branch5x5_1 = _Conv(cin, 48, kernel_size=1)
        self.branch5x5_2 = _Conv(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = _Conv(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, kernel_size=3, padding=1)
        self.branch_pool = _Conv(cin, pool, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_pool_avg(x)),
        ], 1)


class _BlockB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = _Conv(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class _BlockC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(cin, 192, kernel_size=1)
        self.branch7x7_1 = _Conv(cin, c7, kernel_size=1)
        self.branch7x7_2 = _Conv(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = _Conv(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _Conv(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = _Conv(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _Conv(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _Conv(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _Conv(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = _Conv(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_pool_avg(x))], 1)


class _BlockD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = _Conv(cin, 192, kernel_size=1)
        self.branch3x3_2 = _Conv(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = _Conv(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3,
                      self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7,
                          F.max_pool2d(x, 3, stride=2)], 1)


class _BlockE(nn.Module):
    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _Conv(cin, 320, kernel_size=1)
        self.branch3x3_1 = _Conv(cin, 384, kernel_size=1)
        self.branch3x3_2a = _Conv(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _Conv(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = _Conv(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        # The FID network's last block max-pools where the Inception paper average-pools.
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _pool_avg(x)
        return torch.cat([
            self.branch1x1(x),
            torch.cat([self.branch3x3_2a(a), self.branch3x3_2b(a)], 1),
            torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1),
            self.branch_pool(pooled),
        ], 1)


class FidInceptionV3(nn.Module):
    """The TensorFlow FID Inception-v3 (2015-12-05), 2048-d pool features.

    Parameter names follow torchvision's Inception3, so the state dict published for FID in
    PyTorch (``pt_inception-2015-12-05-6726825d.pth``, also used by torch-fidelity and
    torchmetrics) loads as is. Input: images in [-1, 1], resized to 299x299 bilinearly.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, kernel_size=3)
        self.Mixed_5b = _BlockA(192, 32)
        self.Mixed_5c = _BlockA(256, 64)
        self.Mixed_5d = _BlockA(288, 64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b = _BlockC(768, 128)
        self.Mixed_6c = _BlockC(768, 160)
        self.Mixed_6d = _BlockC(768, 160)
        self.Mixed_6e = _BlockC(768, 192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b = _BlockE(1280, max_pool=False)
        self.Mixed_7c = _BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                     "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3))


def load_inception(path: str, allow_download: bool = False) -> Extractor:
    """FID Inception weights from a local file; fetched only when the user allows it."""
    file = Path(path)
    if not file.is_file():
        if not allow_download:
            raise ExtractorError(
                f"extractor: no Inception weights at {path} (pass --allow-download to fetch "
                "them, or mount the file)"
            )
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(INCEPTION_URL, str(file), progress=False)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ExtractorError(f"extractor: cannot read Inception weights {path}: {e}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    net = FidInceptionV3()
    state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ExtractorError(f"extractor: {path} is not FID Inception-v3 weights: {first}") \
            from None
    net.eval()
    h = hashlib.sha256()
    with file.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return Extractor("inception", net, 299, 3, f"inception-{h.hexdigest()[:16]}")


def load_extractor(spec: str, dataset: str, allow_download: bool = False) -> Extractor:
    """`auto` (the dataset's own classifier), `digits`, `faces` or `inception:PATH`."""
    if spec == "auto":
        spec = dataset
    if spec in ("digits", "faces"):
        return load_classifier(spec)
    if spec.startswith("inception:"):
        return load_inception(spec.split(":", 1)[1], allow_download)
    raise ExtractorError(f"extractor: unknown {spec!r}")


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


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
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, mu=mu, sigma=sigma)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs recomputation
    return mu, sigma


def stats_key(data_key: str, extractor: Extractor, real_samples: int) -> str:
    return hashlib.sha256(
        f"{data_key}|{extractor.fingerprint}|{real_samples}".encode()).hexdigest()[:24]
