"""Resident real datasets: decoded once into a uint8 array on the device, cached on disk.

The cache file is written by the first trial that needs it, under an advisory file lock, so
the trials of a group sharing one cache directory decode the data once. Decoding and caching
never change what is trained on: a damaged or unwritable cache only costs time.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import torch
from torch.utils.data import DataLoader

from critbatch_trainer.datasets import Transformed, labels_of
from critbatch_trainer.settings import GROUP_SIZE_ENV, PROG, ConfigError, Resident

DECODE_BATCH = 512  # images per decoding batch
COPY_BYTES = 256 << 20  # cache-to-device copies go in chunks of about this size


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def use_resident(mode: Resident, device: torch.device, shape: tuple[int, ...]) -> bool:
    """Whether to decode a real dataset of `shape` once and keep it on `device`.

    `auto`: on cuda when the array fits a quarter of the free memory (shared by the trials
    of a group), leaving the rest to the networks and the FID; on the CPU the DataLoader.
    """
    if mode == Resident.OFF or (mode == Resident.AUTO and device.type != "cuda"):
        return False
    if device.type != "cuda":
        return True
    nbytes = int(np.prod(shape))
    free, _ = torch.cuda.mem_get_info(device)
    if mode == Resident.ON:
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


def resident_arrays(dataset: Transformed, *, shape: tuple[int, int, int, int], num_classes: int,
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
    a reader sees a whole file or none.

    It writes batch by batch as they are decoded, so the whole array is never held twice in
    memory; that is why it does not go through critbatch.files.atomic_write, which takes the
    content at once.
    """

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


def _decode(dataset: Transformed, shape: tuple[int, int, int, int], workers: int,
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
            labels[done:done + k] = labels_of(y, k)
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
