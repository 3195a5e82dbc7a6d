"""Data-parallel trials: W worker processes share one trial's global batch (docs/distributed.md).

PyTorch's launcher (`torch.distributed.run`) starts the workers and sets RANK, WORLD_SIZE,
LOCAL_RANK and LOCAL_WORLD_SIZE. Every rank draws the whole global batch's data indices and
noise from the same seeded streams and keeps its slice (`Shard`), so the data order and the
random numbers are those of one process at batch b. Gradients are averaged over the ranks after
every backward pass and batch norm takes its statistics over the global batch, so a step is
one process's step at b up to the order of floating-point sums.

Gradients are averaged explicitly rather than by wrapping the networks in
DistributedDataParallel: a GAN step runs the discriminator several times per backward pass,
differentiates through a gradient (WGAN-GP's penalty, a double backward) and runs networks
whose parameters need no gradient, none of which DDP's reducer supports.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from critbatch.orphans import end_with_parent

# A rank waits this long for the others (rank 0's FID evaluation, a checkpoint) before the
# trial fails: longer than any evaluation, short enough that a lost peer ends the trial.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


class PeerLost(RuntimeError):
    """A collective operation failed: another worker of the trial is gone (the launcher
    reports which) or unreachable."""


@contextlib.contextmanager
def _peers() -> Iterator[None]:
    """Turns a failed collective (gloo and NCCL raise RuntimeError) into PeerLost."""
    try:
        yield
    except PeerLost:
        raise
    except RuntimeError as e:
        text = str(e).strip()
        raise PeerLost(text.splitlines()[0] if text else type(e).__name__) from None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"{name}: must be an integer, got {value!r}") from None


@dataclass(frozen=True)
class Shard:
    """Rows lo:hi of a global batch of `total`: this rank's part."""

    lo: int
    hi: int
    total: int

    def take(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.hi - self.lo == self.total else t[self.lo:self.hi]


@dataclass(frozen=True)
class World:
    """This process's place among a trial's workers; one worker when not launched."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @classmethod
    def from_env(cls) -> World:
        """The launcher's RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE; ValueError names a
        bad one."""
        size = _env_int("WORLD_SIZE", 1)
        world = cls(_env_int("RANK", 0), size, _env_int("LOCAL_RANK", 0),
                    _env_int("LOCAL_WORLD_SIZE", size))
        if not (0 <= world.rank < world.size and 0 <= world.local_rank < world.local_size):
            raise ValueError(f"RANK {world.rank} / WORLD_SIZE {world.size} (LOCAL_RANK "
                             f"{world.local_rank} / LOCAL_WORLD_SIZE {world.local_size}) "
                             "is not a rank of its world")
        return world

    @property
    def parallel(self) -> bool:
        return self.size > 1

    @property
    def leader(self) -> bool:
        """Rank 0: it alone evaluates, serves metrics, checkpoints and reports."""
        return self.rank == 0

    def shard(self, batch_size: int) -> Shard:
        part = batch_size // self.size
        return Shard(self.rank * part, (self.rank + 1) * part, batch_size)

    def init(self, device: torch.device) -> None:
        """Join the trial's process group: gloo for host tensors, NCCL for CUDA ones."""
        if not self.parallel or dist.is_initialized():
            return
        # The launcher starts each worker in a session of its own: nothing else would stop a
        # worker whose launcher was killed.
        end_with_parent(signal.SIGTERM)
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT,
                                device_id=device if device.type == "cuda" else None)

    def close(self) -> None:
        if self.parallel and dist.is_initialized():
            dist.destroy_process_group()

    # -- collectives (every rank calls each, in the same order) --------------------------------

    def any(self, flag: bool) -> bool:
        """Whether any rank's flag is set (a stop request agreed at a step boundary)."""
        if not self.parallel:
            return flag
        t = torch.tensor([int(flag)])
        with _peers():
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast_value(self, value: float | None) -> float:
        """Rank 0's number, on every rank."""
        if not self.parallel:
            assert value is not None
            return value
        t = torch.tensor([value if value is not None else 0.0], dtype=torch.float64)
        with _peers():
            dist.broadcast(t, src=0)
        return float(t.item())

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's picklable object (a checkpoint's state), on every rank."""
        if not self.parallel:
            return obj
        box = [obj]
        with _peers():
            dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
        return box[0]

    def barrier(self) -> None:
        if self.parallel:
            with _peers():
                dist.barrier()

    def mean(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each tensor averaged over the ranks (losses: every rank holds its rows' mean)."""
        if not self.parallel or not tensors:
            return tensors
        flat = torch.stack([t.detach().double().reshape(()) for t in tensors])
        with _peers():
            dist.all_reduce(flat)
        return list((flat / self.size).unbind())

    def average_gradients(self, module: nn.Module) -> None:
        """Every parameter's gradient averaged over the ranks, in one flat all-reduce."""
        if not self.parallel:
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        with _peers():
            dist.all_reduce(flat)
        flat /= self.size
        for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            g.copy_(part.view_as(g))


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward pass sums the gradients over the ranks too: every
    rank's output depends on every rank's input."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return _summed(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _summed(grad)


def _summed(t: torch.Tensor) -> torch.Tensor:
    out = t.clone()
    with _peers():
        dist.all_reduce(out)
    return out


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    return _SumOverRanks.apply(x)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose training statistics are those of the global batch.

    The mean and then the variance are each summed over the ranks by an all-reduce that
    autograd differentiates, so forward and backward are those of one BatchNorm2d at b, on
    any device (PyTorch's SyncBatchNorm runs on GPUs only). `synced = False` (see
    `local_statistics`) makes it a plain BatchNorm2d for work one rank does alone.
    """

    synced = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.synced and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        n = float(x.numel() // x.shape[1] * dist.get_world_size())  # equal shards
        mean = sum_over_ranks(x.sum(dims)) / n
        centred = x - mean[None, :, None, None]
        var = sum_over_ranks(centred.pow(2).sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            assert self.running_mean is not None and self.running_var is not None
            assert self.num_batches_tracked is not None
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / max(n - 1.0, 1.0), m)
        return y


def global_batch_norm(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm2d replaced by a GlobalBatchNorm2d of the same state (so
    checkpoints keep their keys and load at any world size)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum,
                                    child.affine, child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new.to(next(child.buffers(), torch.empty(0)).device))
        else:
            global_batch_norm(child)
    return module


@contextlib.contextmanager
def local_statistics(module: nn.Module) -> Iterator[None]:
    """Batch norm inside `module` uses this rank's batch alone: for work only rank 0 does (a
    FID evaluation) or every rank repeats on the same data (a noise-scale measurement)."""
    norms = [m for m in module.modules() if isinstance(m, GlobalBatchNorm2d)]
    for m in norms:
        m.synced = False
    try:
        yield
    finally:
        for m in norms:
            m.synced = True
