"""Training data: seeded batches from any step, of an embedded set or a real one.

The data order is a pure function of (seed, position): an endless concatenation of seeded
permutations. Batch k of a run is always the same examples, so a resumed run sees exactly
the batches an uninterrupted one would, with no sampler state to save.

A real dataset is either read through a DataLoader every step or, resident, decoded once
into a uint8 array (critbatch_trainer.resident) that batches are gathered from on the device.
Its transforms are deterministic (resize, center crop), so both give the same images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler

from critbatch_trainer.datasets import (
    Transformed,
    labels_of,
    num_classes,
    open_dataset,
    to_unit,
    transform,
)
from critbatch_trainer.distributed import Shard
from critbatch_trainer.embedded import EMBEDDED_LOADERS, EmbeddedImages
from critbatch_trainer.fid import default_cache_dir
from critbatch_trainer.resident import resident_arrays, use_resident
from critbatch_trainer.settings import Resident

ORDER_SALT = 0x5EED


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    rng = torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7919 + ORDER_SALT) % 2**63)
    return torch.randperm(n, generator=rng)


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


def _device_batches(images: torch.Tensor, labels: torch.Tensor, seed: int, batch_size: int,
                    start_batch: int, device: torch.device, shard: Shard
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The same batches as `stream_indices` gives (this shard's rows), gathered on the device."""
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
        idx = shard.take(parts[0] if len(parts) == 1 else torch.cat(parts))
        yield images[idx], labels[idx]


class _StreamSampler(Sampler[int]):
    """The stream from position `start` on, only the rows of each global batch in `shard`."""

    def __init__(self, seed: int, n: int, start: int, shard: Shard) -> None:
        self.seed, self.n, self.start, self.shard = seed, n, start, shard

    def __iter__(self) -> Iterator[int]:
        pos, (lo, hi, b) = self.start, (self.shard.lo, self.shard.hi, self.shard.total)
        while True:
            epoch, offset = divmod(pos, self.n)
            order = epoch_permutation(self.seed, epoch, self.n)[offset:]
            if hi - lo < b:
                row = torch.arange(pos, (epoch + 1) * self.n) % b
                order = order[(row >= lo) & (row < hi)]
            yield from order.tolist()
            pos = (epoch + 1) * self.n


class TrainingData:
    """What the loop needs: |S|, the classes, seeded batches from any step, and real images."""

    def __init__(self, dataset: str, *, image_size: int, channels: int,
                 data_path: str | None = None, lsun_classes: str = "bedroom_train",
                 workers: int = 2, resident: Resident = Resident.OFF,
                 device: torch.device | None = None, cache_dir: str | Path | None = None
                 ) -> None:
        """`resident` decides whether a real dataset is decoded once and kept as uint8 on
        `device`, cached as a file in `cache_dir` (default: the FID statistics')."""
        self.name = dataset
        self.image_size, self.channels = image_size, channels
        self.workers = workers
        self.embedded: EmbeddedImages | None = None
        self.torch_dataset: Transformed | None = None
        self.resident: tuple[torch.Tensor, torch.Tensor] | None = None  # uint8 images, labels
        raw = None
        if dataset in EMBEDDED_LOADERS:
            self.embedded = EMBEDDED_LOADERS[dataset](image_size, channels)
            self.size = len(self.embedded.images)
            self.num_classes = self.embedded.num_classes
        else:
            raw = open_dataset(dataset, data_path or "", lsun_classes)
            self.torch_dataset = Transformed(raw, transform(image_size, channels, uint8=False))
            self.size = len(self.torch_dataset)
            self.num_classes = num_classes(raw)
        self.key = hashlib.sha256(
            f"{dataset}|{data_path}|{lsun_classes}|{image_size}|{channels}|{self.size}".encode()
        ).hexdigest()[:16]
        device = device or torch.device("cpu")
        shape = (self.size, channels, image_size, image_size)
        if raw is not None and use_resident(Resident(resident), device, shape):
            self.resident = resident_arrays(
                Transformed(raw, transform(image_size, channels, uint8=True)), shape=shape,
                num_classes=self.num_classes,
                cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(), key=self.key,
                workers=workers, device=device)

    def batches(self, seed: int, batch_size: int, start_batch: int, device: torch.device,
                shard: Shard | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batch number start_batch, start_batch+1, ... of this seed's data order; of each,
        the rows of `shard` (a data-parallel rank's part of the global batch)."""
        shard = shard or Shard(0, batch_size, batch_size)
        if self.embedded is not None:
            images = self.embedded.images.to(device)
            labels = self.embedded.labels.to(device)
            if device.type == "cpu":
                k = start_batch
                while True:
                    idx = shard.take(stream_indices(seed, self.size, k * batch_size,
                                                    batch_size))
                    yield images[idx], labels[idx]
                    k += 1
            # On a GPU the data is resident and each epoch's order is copied there once, so a
            # step costs no host-to-device copy (a pageable copy would block the host).
            yield from _device_batches(images, labels, seed, batch_size, start_batch, device,
                                       shard)
            return
        if self.resident is not None:
            images, labels = (t.to(device) for t in self.resident)
            for x, y in _device_batches(images, labels, seed, batch_size, start_batch, device,
                                        shard):
                yield to_unit(x), y
        else:
            loader = DataLoader(self.torch_dataset, batch_size=shard.hi - shard.lo,
                                sampler=_StreamSampler(seed, self.size, start_batch * batch_size,
                                                       shard),
                                num_workers=self.workers, drop_last=True,
                                pin_memory=device.type == "cuda")
            for x, y in loader:
                yield x.to(device, non_blocking=True), labels_of(y, x.shape[0]).to(device)

    def real_images(self, limit: int, chunk: int = 500) -> Iterator[torch.Tensor]:
        """Up to `limit` real images in a fixed order (the same for every trial), in chunks."""
        count = min(limit, self.size)
        idx = stream_indices(0, self.size, 0, count)
        if self.embedded is not None:
            for i in range(0, count, chunk):
                yield self.embedded.images[idx[i:i + chunk]]
            return
        if self.resident is not None:
            images = self.resident[0]
            idx = idx.to(images.device)
            for i in range(0, count, chunk):
                yield to_unit(images[idx[i:i + chunk]])
            return
        subset = torch.utils.data.Subset(self.torch_dataset, idx.tolist())
        for x, _ in DataLoader(subset, batch_size=chunk, num_workers=self.workers):
            yield x
