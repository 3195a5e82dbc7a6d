"""One trial: train a GAN with TTUR until its FID reaches the threshold or the step budget ends.

`Trial.create` loads what a trial needs (data, feature extractor, real statistics); `run`
trains, evaluates every eval_every steps and checkpoints. A trial's whole state is
checkpointed, so a resumed run follows the uninterrupted one step for step and reports the
same N(b).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from critbatch.science import GradientNoiseScale
from critbatch_trainer import checkpoint, numerics
from critbatch_trainer.data import TrainingData
from critbatch_trainer.distributed import World, local_statistics
from critbatch_trainer.extractors import Extractor, load_extractor
from critbatch_trainer.fid import (
    FrechetReference,
    cached_real_stats,
    feature_stats,
    generated_stats,
    stats_key,
)
from critbatch_trainer.gan import Batches, Gan
from critbatch_trainer.metrics import NullMetrics, TrainerMetrics
from critbatch_trainer.models import count_params
from critbatch_trainer.settings import ConfigError, TrainerConfig, flag_name
from critbatch_trainer.timings import Timings, process_age

CHECKPOINT_VERSION = 1
# On a GPU, losses and gradient norms reach the metrics every this many steps (and at each
# evaluation): reading them is a host synchronisation, which would stall the step queue.
METRICS_EVERY = 10
# Settings that define N(b): a checkpoint written under other values belongs to another run.
# Not `resident`: it serves the same images in the same order (bit for bit on the CPU).
IDENTITY = ("model", "dataset", "data_path", "lsun_classes", "image_size", "channels",
            "batch_size", "seed", "optimizer", "lr_g", "lr_d", "beta1_g", "beta2_g", "eps_g",
            "beta1_d", "beta2_d", "eps_d", "fid_threshold", "eval_every", "eval_samples",
            "real_samples", "extractor", "width", "z_dim", "n_critic", "gp_lambda",
            "ema_decay", "ema_start", "attention_res", "gns_every", "bf16", "reproducible_cpu",
            "fused_attention")
EVAL_SEED_OFFSET = 0x0E7A1  # the evaluation noise's seed is the trial's seed plus this


class Terminated(Exception):
    """SIGTERM arrived; a checkpoint was saved (when a directory is set)."""


def interpolate_crossing(prev: tuple[int, float], cur: tuple[int, float],
                         threshold: float) -> float | None:
    """Step where the straight line through two (step, FID) evaluations crosses the threshold."""
    (s0, f0), (s1, f1) = prev, cur
    if not (f0 > threshold >= f1) or f0 == f1:
        return None
    return s0 + (f0 - threshold) / (f0 - f1) * (s1 - s0)


def resolve_device(name: str, world: World | None = None) -> torch.device:
    """The trial's device; a data-parallel worker's GPU is its local rank's."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda requested but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if world is not None and world.parallel and device.type == "cuda" and device.index is None:
        if world.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"device: worker {world.local_rank} of {world.local_size} on this "
                              f"node has no GPU of its own ({torch.cuda.device_count()} "
                              "visible)")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    return device


def check_world(cfg: TrainerConfig, world: World) -> None:
    """ConfigError where a setting cannot be split over the trial's worker processes."""
    if not world.parallel:
        return
    if cfg.batch_size % world.size:
        raise ConfigError(f"batch-size: {cfg.batch_size} is not divisible by the "
                          f"{world.size} worker processes (WORLD_SIZE) that share it")
    for field in ("cuda_graph", "micro_batch", "recompute_activations"):
        if getattr(cfg, field):
            raise ConfigError(f"{flag_name(field)}: not with {world.size} worker processes "
                              "(WORLD_SIZE)")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Progress:
    step: int = 0
    history: list[tuple[int, float]] | None = None
    reached_at: int | None = None
    interpolated: float | None = None
    elapsed: float = 0.0
    finished: bool = False


class Trial:
    """The GAN, data and FID reference of one trial; `run` trains it."""

    def __init__(self, cfg: TrainerConfig, *, device: torch.device, data: TrainingData,
                 extractor: Extractor | None, reference: FrechetReference | None,
                 hardware: dict[str, Any], metrics: TrainerMetrics | NullMetrics | None = None,
                 log: Callable[[str], None] | None = None, world: World | None = None) -> None:
        """`extractor` and `reference` may be None on a data-parallel worker other than rank 0,
        which never evaluates."""
        self.cfg, self.device, self.data = cfg, device, data
        self.world = world or World()
        self.extractor, self.reference, self.hardware = extractor, reference, hardware
        self.metrics = metrics if metrics is not None else NullMetrics()
        self.log = log or _stderr
        self.stop_requested = False
        self.gan = Gan(cfg, device=device, num_classes=data.num_classes, world=self.world)
        self.gns = GradientNoiseScale()
        self.generator_params = count_params(self.gan.G)
        self.progress = Progress(history=[])
        self.timings = Timings()
        eval_rng = torch.Generator().manual_seed(cfg.seed + EVAL_SEED_OFFSET)
        self.eval_z = torch.randn(cfg.eval_samples, cfg.z_dim, generator=eval_rng)
        self.eval_y = torch.randint(data.num_classes, (cfg.eval_samples,), generator=eval_rng)

    @classmethod
    def create(cls, cfg: TrainerConfig, metrics: TrainerMetrics | NullMetrics | None = None,
               log: Callable[[str], None] | None = None, world: World | None = None) -> Trial:
        """A trial with its device, data, feature extractor and real statistics loaded (the
        statistics computed once per cache), joined to its data-parallel workers if any.
        ConfigError or ExtractorError names what cannot be used."""
        started, t0 = process_age(), time.perf_counter()
        world = world or World()
        check_world(cfg, world)
        if cfg.checkpoint_dir and world.leader:
            checkpoint.check_directory(cfg.checkpoint_dir)
        device = resolve_device(cfg.device, world)
        if cfg.reproducible_cpu:
            numerics.pin_torch()
        hardware = numerics.hardware(device, cfg.reproducible_cpu)
        try:
            data = TrainingData(cfg.dataset, image_size=cfg.image_size, channels=cfg.channels,
                                data_path=cfg.data_path, lsun_classes=cfg.lsun_classes,
                                workers=cfg.workers, resident=cfg.resident, device=device,
                                cache_dir=cfg.stats_cache)
        except (FileNotFoundError, RuntimeError, OSError) as e:
            raise ConfigError(f"data-path: cannot read {cfg.dataset} at {cfg.data_path}: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                              ) from None
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: autotune each conv once
        extractor, reference = None, None
        if world.leader:
            extractor = load_extractor(cfg.extractor, cfg.dataset, cfg.allow_download).to(device)
            key = stats_key(data.key, extractor, cfg.real_samples)
            reference = FrechetReference(*cached_real_stats(
                cfg.stats_cache, key,
                lambda: feature_stats(extractor, data.real_images(cfg.real_samples), device)))
        world.init(device)
        trial = cls(cfg, device=device, data=data, extractor=extractor, reference=reference,
                    hardware=hardware, metrics=metrics, log=log, world=world)
        trial.timings.start = started or 0.0
        trial.timings.setup = time.perf_counter() - t0
        return trial

    # -- state ---------------------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        """The settings a checkpoint must share with this run, how its D scores a batch
        (BigGAN's changed to one joint pass over real and fake), and the micro-batch size
        where micro-batches split the batch (0 where they do not: the same step)."""
        micro = self.cfg.micro_batch if self.cfg.micro_batch < self.cfg.batch_size else 0
        return {**{k: getattr(self.cfg, k) for k in IDENTITY},
                "joint_d": self.gan.recipe.joint_d, "micro_batch": micro}

    def state_dict(self) -> dict[str, Any]:
        p = self.progress
        return {
            "version": CHECKPOINT_VERSION,
            "identity": self.identity(),
            "step": p.step, "history": list(p.history or []), "reached_at": p.reached_at,
            "interpolated": p.interpolated, "elapsed": p.elapsed, "finished": p.finished,
            **self.gan.state_dict(),
            "gns": self.gns.state_dict(),
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        if s.get("version") != CHECKPOINT_VERSION:
            raise ConfigError(f"checkpoint-dir: checkpoint version {s.get('version')!r} is not "
                              f"{CHECKPOINT_VERSION}")
        mine = self.identity()
        # A checkpoint without these in its identity was written with unpinned numerics, with
        # D's real and fake passes apart, without micro-batches and without fused attention.
        for k, v in {"reproducible_cpu": False, "joint_d": False, "micro_batch": 0,
                     "fused_attention": False, **s["identity"]}.items():
            if mine.get(k) != v:
                what = ("a joint real and fake discriminator pass" if k == "joint_d"
                        else flag_name(k))
                raise ConfigError(f"checkpoint-dir: holds a run with {what} = "
                                  f"{v!r}, this run has {mine.get(k)!r}")
        self.gan.load_state_dict(s)
        self.gns.load_state_dict(s["gns"])
        self.gan.losses = dict(s.get("losses", {}))
        self.progress = Progress(s["step"], [tuple(h) for h in s["history"]], s["reached_at"],
                                 s["interpolated"], s["elapsed"], s["finished"])

    def _save(self) -> None:
        if self.cfg.checkpoint_dir and self.world.leader:
            with self.timings.phase("checkpoint"):
                checkpoint.save(self.cfg.checkpoint_dir, self.state_dict())

    def restore(self) -> bool:
        """Resume from the checkpoint directory when it holds a usable checkpoint; True if it did.

        An unreadable one is set aside and the trial starts from step 0 (checkpoint.resume).
        Rank 0 reads it and sends its state to the other workers, which need no shared disk.
        """
        if not self.cfg.checkpoint_dir:
            return False
        restored = self.world.leader and checkpoint.resume(
            self.cfg.checkpoint_dir, self.load_state_dict, self.state_dict, self.log)
        if self.world.parallel:
            state = self.world.broadcast_object(self.state_dict() if restored else None)
            if state is not None and not self.world.leader:
                self.load_state_dict(state)
            restored = state is not None
        return restored

    # -- training ------------------------------------------------------------------------------

    def train_step(self, batches: Batches) -> None:
        """One training step of the GAN at the trial's current step."""
        self.gan.train_step(batches, self.progress.step)

    def measure_noise_scale(self) -> float | None:
        """B_simple, updated from one measurement at the current step (science's estimator)."""
        norms = self.gan.noise_scale_norms(self.progress.step)
        if norms is None:
            return self.gns.value
        small_sq, big_sq, half = norms
        return self.gns.update(small_sq, big_sq, half, 2 * half)

    @torch.no_grad()
    def evaluate(self) -> float:
        """FID of eval_samples generated images (fixed noise) against the real statistics,
        measured by rank 0 and told to the other workers."""
        fid = None
        if self.world.leader:
            assert self.extractor is not None and self.reference is not None
            labels = self.eval_y if self.gan.recipe.conditional else None
            with self.timings.phase("evaluate"), local_statistics(self.gan.evaluated):
                mu, sigma = generated_stats(self.gan.evaluated, self.extractor, self.eval_z,
                                            labels, self.device)
                fid = self.reference.distance(mu, sigma)
        return self.world.broadcast_value(fid)

    def run(self) -> dict[str, Any]:
        """Train to the threshold or the budget; the contract's result object."""
        cfg, p, metrics = self.cfg, self.progress, self.metrics
        if p.finished and p.reached_at is None and p.step < cfg.max_steps:
            p.finished = False  # a censored run resumed with a larger budget trains on
        metrics.static(self.generator_params, self.data.size, cfg.max_steps, cfg.fid_threshold)
        metrics.hardware(self.hardware)
        metrics.step(p.step, p.step * cfg.batch_size)
        if p.history:
            metrics.evaluation(p.history[-1][1])
        if p.reached_at is not None:
            metrics.reached(p.reached_at, p.interpolated)
        metrics.noise_scale(self.gns.value)
        batches = self.data.batches(cfg.seed, cfg.batch_size,
                                    p.step * self.gan.batches_per_step, self.device)
        t_start = time.perf_counter()
        elapsed0 = p.elapsed
        self.gan.G.train()
        self.gan.D.train()
        while not p.finished:
            if self.world.any(self.stop_requested):  # every worker stops at the same step
                p.elapsed = elapsed0 + time.perf_counter() - t_start
                self._save()
                self.world.barrier()
                raise Terminated()
            t0 = time.perf_counter()
            self.train_step(batches)
            p.step += 1
            dt = time.perf_counter() - t0
            self.timings.train += dt
            if cfg.gns_every and p.step % cfg.gns_every == 0:
                with self.timings.phase("noise_scale"):
                    metrics.noise_scale(self.measure_noise_scale())
            evaluating = p.step % cfg.eval_every == 0 or p.step >= cfg.max_steps
            metrics.step(p.step, cfg.batch_size, dt)
            if (self.device.type == "cpu" or evaluating or p.step % METRICS_EVERY == 0
                    or self.stop_requested):
                v = self.gan.loss_values()
                metrics.network("generator", v["generator"], v["grad_generator"])
                metrics.network("discriminator", v["discriminator"], v["grad_discriminator"])
            if evaluating:
                self._after_evaluation(self.evaluate())
            if p.reached_at is not None or p.step >= cfg.max_steps:
                p.finished = True
            p.elapsed = elapsed0 + time.perf_counter() - t_start
            if p.finished or (cfg.checkpoint_every and p.step % cfg.checkpoint_every == 0):
                self._save()
        metrics.finished()
        return self.result()

    def _after_evaluation(self, fid: float) -> None:
        cfg, p = self.cfg, self.progress
        assert p.history is not None
        prev = p.history[-1] if p.history else None
        p.history.append((p.step, fid))
        self.metrics.evaluation(fid)
        gns = self.gns.value
        losses = self.gan.loss_values()
        self.log(f"step {p.step} fid {fid:.3f} (threshold {cfg.fid_threshold:g}) "
                 f"loss_g {losses['generator']:.3f} loss_d "
                 f"{losses['discriminator']:.3f}"
                 + (f" gns {gns:.1f}" if gns is not None else ""))
        if fid <= cfg.fid_threshold and p.reached_at is None:
            p.reached_at = p.step
            p.interpolated = (interpolate_crossing(prev, (p.step, fid), cfg.fid_threshold)
                              if prev else None)
            self.metrics.reached(p.step, p.interpolated)

    def result(self) -> dict[str, Any]:
        cfg, p = self.cfg, self.progress
        reached = p.reached_at is not None
        steps = p.reached_at if reached else p.step
        fid = p.history[-1][1] if p.history else math.nan
        gns = self.gns.value
        return {
            "sweep": cfg.sweep, "batch_size": cfg.batch_size, "seed": cfg.seed,
            "reached": reached, "steps": steps,
            "interpolated_steps": (round(p.interpolated, 3) if p.interpolated is not None
                                   else None),
            "sfo": steps * cfg.batch_size, "fid": round(fid, 6), "threshold": cfg.fid_threshold,
            "max_steps": cfg.max_steps, "wall_seconds": round(p.elapsed, 3),
            "generator_params": self.generator_params, "dataset_size": self.data.size,
            "gradient_noise_scale": round(gns, 3) if gns is not None else None,
            "hardware": self.hardware, "processes": self.world.size,
        }
