"""Training data: the embedded sets (no download) and real ones read from a path.

The data order is a pure function of (seed, position): an endless concatenation of seeded
permutations. Batch k of a run is always the same examples, so a resumed run sees exactly
the batches an uninterrupted one would, with no sampler state to save.

A real dataset is either read through a DataLoader every step or, resident, decoded once
into a uint8 array (cached on disk) that batches are gathered from on the device. Its
transforms are deterministic (resize, center crop), so both give the same images.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Sampler

from critbatch_trainer.config import GROUP_SIZE_ENV, PROG, ConfigError
from critbatch_trainer.fid import default_cache_dir

ORDER_SALT = 0x5EED
DECODE_BATCH = 512  # images per decoding batch
COPY_BYTES = 256 << 20  # cache-to-device copies go in chunks of about this size


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


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels k -> 2k/255 - 1; on the CPU bit for bit what ToTensor + Normalize(0.5, 0.5)
    give, so a resident dataset trains on exactly the DataLoader path's values."""
    return x.float() / 127.5 - 1


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
                 lsun_classes: str = "bedroom_train", workers: int = 2, resident: str = "off",
                 device: torch.device | None = None, cache_dir: str | Path | None = None
                 ) -> None:
        """`resident` (auto/on/off) decides whether a real dataset is decoded once and kept as
        uint8 on `device`, cached as a file in `cache_dir` (default: the FID statistics')."""
        self.name = dataset
        self.image_size, self.channels = image_size, channels
        self.workers = workers
        self.embedded: EmbeddedImages | None = None
        self.torch_dataset: _Transformed | None = None
        self.resident: tuple[torch.Tensor, torch.Tensor] | None = None  # uint8 images, labels
        raw = None
        if dataset == "digits":
            self.embedded = load_digits_images(image_size, channels)
        elif dataset == "faces":
            self.embedded = load_lfw_subset(image_size, channels)
        else:
            raw = _real_dataset(dataset, data_path or "", lsun_classes)
            self.torch_dataset = _Transformed(raw, _transform(image_size, channels, uint8=False))
        if self.embedded is not None:
            self.size = len(self.embedded.images)
            self.num_classes = self.embedded.num_classes
        else:
            self.size = len(self.torch_dataset)
            self.num_classes = _num_classes(raw)
        self.key = hashlib.sha256(
            f"{dataset}|{data_path}|{lsun_classes}|{image_size}|{channels}|{self.size}".encode()
        ).hexdigest()[:16]
        device = device or torch.device("cpu")
        shape = (self.size, channels, image_size, image_size)
        if raw is not None and _use_resident(resident, device, shape):
            self.resident = _resident_arrays(
                _Transformed(raw, _transform(image_size, channels, uint8=True)), shape,
                self.num_classes, Path(cache_dir) if cache_dir else default_cache_dir(),
                self.key, workers, device)

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
        elif self.resident is not None:
            images, labels = (t.to(device) for t in self.resident)
            for x, y in _device_batches(images, labels, seed, batch_size, start_batch, device):
                yield to_unit(x), y
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
        if self.resident is not None:
            images = self.resident[0]
            idx = idx.to(images.device)
            for i in range(0, count, chunk):
                yield to_unit(images[idx[i:i + chunk]])
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


def _transform(image_size: int, channels: int, uint8: bool) -> Callable[[Any], torch.Tensor]:
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


def _real_dataset(dataset: str, path: str, lsun_classes: str) -> torch.utils.data.Dataset:
    """A torchvision dataset of (PIL image, label) without transforms."""
    import torchvision.datasets as dsets

    if dataset == "imagefolder":
        return dsets.ImageFolder(path)
    if dataset == "lsun":
        return dsets.LSUN(path, classes=lsun_classes.split(","))
    if dataset == "celeba":
        return dsets.CelebA(path, split="train", target_type=[], download=False)
    raise ValueError(f"dataset: unknown {dataset!r}")


class _Transformed(torch.utils.data.Dataset):
    """(transform(image), label) of a torchvision dataset; label 0 where it has none (CelebA)."""

    def __init__(self, inner: torch.utils.data.Dataset,
                 transform: Callable[[Any], torch.Tensor]) -> None:
        self.inner, self.transform = inner, transform

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.inner[i]
        return self.transform(image), (label if isinstance(label, int) else 0)


# ---------------------------------------------------------------------------------------------
# Resident real datasets
# ---------------------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def _use_resident(mode: str, device: torch.device, shape: tuple[int, ...]) -> bool:
    """`auto`: on cuda when the array fits a quarter of the free memory (shared by the trials
    of a group), leaving the rest to the networks and the FID; on the CPU the DataLoader."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return False
    if device.type != "cuda":
        return True
    nbytes = int(np.prod(shape))
    free, _ = torch.cuda.mem_get_info(device)
    if mode == "on":
        if nbytes > free:
            raise ConfigError(f"resident: the dataset needs {_mib(nbytes)} as uint8, the GPU "
                              f"has {_mib(free)} free")
        return True
    group = os.environ.get(GROUP_SIZE_ENV, "")
    budget = free // 4 // (int(group) if group.isdigit() and int(group) > 0 else 1)
    if nbytes > budget:
        _say(f"data not resident: {_mib(nbytes)} as uint8 is over {_mib(budget)}, a quarter "
             "of the GPU's free memory (per trial); reading it through the DataLoader")
        return False
    return True


def _resident_arrays(dataset: _Transformed, shape: tuple[int, int, int, int], num_classes: int,
                     cache_dir: Path, key: str, workers: int, device: torch.device
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoded images and labels on the device: from the cache file, else decoded (once
    per cache directory: concurrent trials wait for the one decoding) and cached."""
    images_path = cache_dir / f"{key}.u8.npy"
    labels_path = cache_dir / f"{key}.labels.npy"
    cached = _read_cache(images_path, labels_path, shape, num_classes, warn=False)
    if cached is None:
        with _exclusive(cache_dir / f"{key}.u8.lock") as locked:
            cached = _read_cache(images_path, labels_path, shape, num_classes, warn=True)
            if cached is None:
                if locked:  # no one else is writing: temporary files are a killed run's
                    for stale in cache_dir.glob(f"{key}.*.tmp"):
                        with contextlib.suppress(OSError):
                            stale.unlink()
                return _decode(dataset, shape, workers, device,
                               _CacheWriter.start(images_path, labels_path, shape))
    images, labels = cached
    out = torch.empty(shape, dtype=torch.uint8, device=device)
    rows = max(1, COPY_BYTES // int(np.prod(shape[1:])))
    for i in range(0, shape[0], rows):
        out[i:i + rows].copy_(torch.from_numpy(np.array(images[i:i + rows])))
    _say(f"data resident on {device.type}: {shape[0]} images, {_mib(out.nbytes)} "
         f"(from {images_path.name})")
    return out, torch.from_numpy(labels).to(device)


def _read_cache(images_path: Path, labels_path: Path, shape: tuple[int, ...], num_classes: int,
                warn: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached (images memory-mapped, labels), or None when absent, damaged or not of this
    shape (then rewritten by the caller)."""
    if not images_path.exists():
        return None
    try:
        images = np.load(images_path, mmap_mode="r")
        labels = np.load(labels_path)
        if images.dtype != np.uint8 or images.shape != shape:
            raise ValueError(f"holds {images.dtype} {images.shape}, expected uint8 {shape}")
        if labels.dtype != np.int64 or labels.shape != shape[:1] or not (
                labels.min() >= 0 and labels.max() < num_classes):
            raise ValueError("its labels do not match")
    except (OSError, ValueError, EOFError) as e:
        if warn:
            _say(f"warning: ignoring the data cache {images_path.name}: {e}; decoding again")
        return None
    return images, labels


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[bool]:
    """An advisory lock on `path`, yielding whether it was taken. Without one (read-only
    directory, a file system without locks) concurrent trials each decode: only slower."""
    fh = None
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = path.open("a")
    if fh is None:
        yield False
        return
    with fh:
        locked = True
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say("waiting for another trial decoding the same data into the cache")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX)
            except OSError:
                locked = False
        except OSError:
            locked = False
        yield locked


class _CacheWriter:
    """Streams decoded batches into a temporary .npy file, renamed into place once complete:
    a reader sees a whole file or none."""

    def __init__(self, images_path: Path, labels_path: Path, fh: IO[bytes], tmp: str) -> None:
        self.images_path, self.labels_path, self.fh, self.tmp = images_path, labels_path, fh, tmp

    @classmethod
    def start(cls, images_path: Path, labels_path: Path, shape: tuple[int, ...]
              ) -> _CacheWriter | None:
        """A writer, or None (with a warning) when the cache directory is not writable."""
        try:
            images_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=images_path.parent, prefix=images_path.name,
                                       suffix=".tmp")
        except OSError as e:
            _no_cache(images_path, e)
            return None
        writer = cls(images_path, labels_path, os.fdopen(fd, "wb"), tmp)
        try:
            np.lib.format.write_array_header_1_0(
                writer.fh, {"descr": "|u1", "fortran_order": False, "shape": shape})
        except OSError as e:
            writer.abort(e)
            return None
        return writer

    def write(self, x: torch.Tensor) -> bool:
        """Append a batch; False (the file dropped, with a warning) when writing fails."""
        try:
            self.fh.write(x.contiguous().numpy().tobytes())
        except OSError as e:
            self.abort(e)
            return False
        return True

    def commit(self, labels: np.ndarray) -> None:
        """Labels first, then the images: a reader needs both, and checks both."""
        labels_tmp = ""
        try:
            self.fh.close()
            fd, labels_tmp = tempfile.mkstemp(dir=self.labels_path.parent,
                                              prefix=self.labels_path.name, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, labels)
            os.replace(labels_tmp, self.labels_path)
            os.replace(self.tmp, self.images_path)
        except OSError as e:
            with contextlib.suppress(OSError):
                if labels_tmp:
                    os.unlink(labels_tmp)
            self.abort(e)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.fh.close()
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)

    def abort(self, error: OSError) -> None:
        self.discard()
        _no_cache(self.images_path, error)


def _no_cache(path: Path, error: OSError) -> None:
    _say(f"warning: cannot write the data cache {path}: {error.strerror or error}; "
         "continuing without it")


def _decode(dataset: _Transformed, shape: tuple[int, int, int, int], workers: int,
            device: torch.device, writer: _CacheWriter | None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image in index order as uint8 on the device (and into the cache file)."""
    n = shape[0]
    images = torch.empty(shape, dtype=torch.uint8, device=device)
    labels = torch.empty(n, dtype=torch.int64)
    _say(f"decoding {n} images ({_mib(images.nbytes)} as uint8) ...")
    t0 = time.perf_counter()
    done, tenth = 0, max(1, n // 10)
    try:
        for x, y in DataLoader(dataset, batch_size=DECODE_BATCH, num_workers=workers):
            k = len(x)
            if x.dtype != torch.uint8 or tuple(x.shape[1:]) != shape[1:]:
                raise RuntimeError(f"images {done}-{done + k - 1} decode to {x.dtype} "
                                   f"{tuple(x.shape[1:])}, expected uint8 {shape[1:]}")
            images[done:done + k].copy_(x)
            labels[done:done + k] = _labels(y, k)
            if writer is not None and not writer.write(x):
                writer = None
            done += k
            if n > 10 * DECODE_BATCH and done // tenth > (done - k) // tenth and done < n:
                _say(f"decoded {done}/{n} images ({time.perf_counter() - t0:.0f} s)")
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    if writer is not None:
        writer.commit(labels.numpy())
    _say(f"data resident on {device.type}: {n} images decoded in "
         f"{time.perf_counter() - t0:.1f} s")
    return images, labels.to(device)
