"""Training data: the embedded sets (no download) and real ones read from a path.

The data order is a pure function of (seed, position): an endless concatenation of seeded
permutations. Batch k of a run is always the same examples, so a resumed run sees exactly
the batches an uninterrupted one would, with no sampler state to save.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Sampler

ORDER_SALT = 0x5EED


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7919 + ORDER_SALT) % 2**63)
    return torch.randperm(n, generator=g)


def stream_indices(seed: int, n: int, start: int, count: int) -> torch.Tensor:
    """Indices start..start+count of the endless stream of per-epoch permutations of range(n)."""
    out: list[torch.Tensor] = []
    pos, left = start, count
    while left > 0:
        epoch, offset = divmod(pos, n)
        take = min(n - offset, left)
        out.append(epoch_permutation(seed, epoch, n)[offset:offset + take])
        pos, left = pos + take, left - take
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


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


def load_digits_images(size: int, channels: int = 1) -> EmbeddedImages:
    """scikit-learn's 1797 8x8 handwritten digits, upsampled; labels 0-9."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return EmbeddedImages("digits", _resize(d.images / 16.0, size, channels),
                          torch.from_numpy(d.target.astype(np.int64)), 10)


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


def _device_batches(images: torch.Tensor, labels: torch.Tensor, seed: int, batch_size: int,
                    start_batch: int, device: torch.device
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The same batches as `stream_indices` gives, gathered on the device."""
    n = len(images)
    pos = start_batch * batch_size
    epoch, order = -1, torch.empty(0, dtype=torch.int64, device=device)
    while True:
        parts, left = [], batch_size
        while left > 0:
            e, offset = divmod(pos, n)
            if e != epoch:
                epoch, order = e, epoch_permutation(seed, e, n).to(device)
            take = min(n - offset, left)
            parts.append(order[offset:offset + take])
            pos, left = pos + take, left - take
        idx = parts[0] if len(parts) == 1 else torch.cat(parts)
        yield images[idx], labels[idx]


class _StreamSampler(Sampler[int]):
    def __init__(self, seed: int, n: int, start: int) -> None:
        self.seed, self.n, self.start = seed, n, start

    def __iter__(self) -> Iterator[int]:
        pos = self.start
        while True:
            epoch, offset = divmod(pos, self.n)
            yield from epoch_permutation(self.seed, epoch, self.n)[offset:].tolist()
            pos = (epoch + 1) * self.n


class TrainingData:
    """What the loop needs: |S|, the classes, seeded batches from any step, and real images."""

    def __init__(self, dataset: str, image_size: int, channels: int, data_path: str | None = None,
                 lsun_classes: str = "bedroom_train", workers: int = 2) -> None:
        self.name = dataset
        self.image_size, self.channels = image_size, channels
        self.workers = workers
        self.embedded: EmbeddedImages | None = None
        self.torch_dataset = None
        if dataset == "digits":
            self.embedded = load_digits_images(image_size, channels)
        elif dataset == "faces":
            self.embedded = load_lfw_subset(image_size, channels)
        else:
            self.torch_dataset = _real_dataset(dataset, data_path or "", image_size, channels,
                                               lsun_classes)
        if self.embedded is not None:
            self.size = len(self.embedded.images)
            self.num_classes = self.embedded.num_classes
        else:
            self.size = len(self.torch_dataset)
            self.num_classes = _num_classes(self.torch_dataset)
        self.key = hashlib.sha256(
            f"{dataset}|{data_path}|{lsun_classes}|{image_size}|{channels}|{self.size}".encode()
        ).hexdigest()[:16]

    def batches(self, seed: int, batch_size: int, start_batch: int,
                device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batch number start_batch, start_batch+1, ... of this seed's data order."""
        if self.embedded is not None:
            images = self.embedded.images.to(device)
            labels = self.embedded.labels.to(device)
            if device.type == "cpu":
                k = start_batch
                while True:
                    idx = stream_indices(seed, self.size, k * batch_size, batch_size)
                    yield images[idx], labels[idx]
                    k += 1
            # On a GPU the data is resident and each epoch's order is copied there once, so a
            # step costs no host-to-device copy (a pageable copy would block the host).
            yield from _device_batches(images, labels, seed, batch_size, start_batch, device)
            return
        else:
            loader = DataLoader(self.torch_dataset, batch_size=batch_size,
                                sampler=_StreamSampler(seed, self.size, start_batch * batch_size),
                                num_workers=self.workers, drop_last=True,
                                pin_memory=device.type == "cuda")
            for x, y in loader:
                yield x.to(device, non_blocking=True), _labels(y, x.shape[0]).to(device)

    def real_images(self, limit: int, chunk: int = 500) -> Iterator[torch.Tensor]:
        """Up to `limit` real images in a fixed order (the same for every trial), in chunks."""
        count = min(limit, self.size)
        idx = stream_indices(0, self.size, 0, count)
        if self.embedded is not None:
            for i in range(0, count, chunk):
                yield self.embedded.images[idx[i:i + chunk]]
            return
        subset = torch.utils.data.Subset(self.torch_dataset, idx.tolist())
        for x, _ in DataLoader(subset, batch_size=chunk, num_workers=self.workers):
            yield x


def _labels(y: object, n: int) -> torch.Tensor:
    if isinstance(y, torch.Tensor) and y.dim() == 1 and y.dtype == torch.int64:
        return y
    return torch.zeros(n, dtype=torch.int64)


def _num_classes(ds: object) -> int:
    classes = getattr(ds, "classes", None)
    return max(1, len(classes)) if classes else 1


def _real_dataset(dataset: str, path: str, image_size: int, channels: int, lsun_classes: str):
    """A torchvision dataset with the paper's transforms: resize, center crop, scale to [-1, 1]."""
    import torchvision.datasets as dsets
    from torchvision import transforms as T

    steps = [T.Resize(image_size), T.CenterCrop(image_size)]
    if channels == 1:
        steps.append(T.Grayscale(1))
    steps += [T.ToTensor(), T.Normalize([0.5] * channels, [0.5] * channels)]
    transform = T.Compose(steps)
    if dataset == "imagefolder":
        return dsets.ImageFolder(path, transform=transform)
    if dataset == "lsun":
        return dsets.LSUN(path, classes=lsun_classes.split(","), transform=transform)
    if dataset == "celeba":
        return _Unlabelled(dsets.CelebA(path, split="train", target_type=[],
                                        transform=transform, download=False))
    raise ValueError(f"dataset: unknown {dataset!r}")


class _Unlabelled(torch.utils.data.Dataset):
    """A dataset whose samples are (image, 0): one class, for unconditional data."""

    def __init__(self, inner: torch.utils.data.Dataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        item = self.inner[i]
        return (item[0] if isinstance(item, tuple) else item), 0
