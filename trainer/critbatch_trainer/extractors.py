"""Feature extractors for the FID: a small shipped classifier per embedded dataset, or the FID
Inception-v3 from a weight file. Each maps images in [-1, 1] to feature vectors and carries a
fingerprint of its weights, so cached real statistics are never reused across extractors.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from critbatch.vocabulary import EMBEDDED_DATASETS
from critbatch_trainer.inception import FidInceptionV3

WEIGHTS_DIR = Path(__file__).parent / "weights"
INCEPTION_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                 "pt_inception-2015-12-05-6726825d.pth")


class ExtractorError(ValueError):
    """The extractor cannot be loaded (missing or malformed weights)."""


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


@dataclass(kw_only=True)
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
    return Extractor(name=name, network=net, input_size=meta["input_size"],
                     channels=meta["channels"], fingerprint=f"{name}-{digest}")


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
    return Extractor(name="inception", network=net, input_size=299, channels=3,
                     fingerprint=f"inception-{h.hexdigest()[:16]}")


def load_extractor(spec: str, dataset: str, allow_download: bool = False) -> Extractor:
    """`auto` (the dataset's own classifier), `digits`, `faces` or `inception:PATH`."""
    if spec == "auto":
        spec = dataset
    if spec in EMBEDDED_DATASETS:
        return load_classifier(spec)
    if spec.startswith("inception:"):
        return load_inception(spec.split(":", 1)[1], allow_download)
    raise ExtractorError(f"extractor: unknown {spec!r}")
