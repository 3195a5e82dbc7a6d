"""One trial: train a GAN with TTUR until its FID reaches the threshold or the step budget ends.

Everything random in training comes from one seeded CPU generator (noise, fake labels,
penalty interpolation) plus the stateless data order, and all of it is checkpointed, so a
resumed run follows the uninterrupted one step for step and reports the same N(b).
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from critbatch.science import GradientNoiseScale
from critbatch_trainer import checkpoint, numerics
from critbatch_trainer.config import ConfigError, TrainerConfig
from critbatch_trainer.data import TrainingData
from critbatch_trainer.fid import (
    FrechetReference,
    cached_real_stats,
    feature_stats,
    generated_stats,
    load_extractor,
    stats_key,
)
from critbatch_trainer.metrics import TrainerMetrics
from critbatch_trainer.models import biggan, build, count_params, dcgan, wgan
from critbatch_trainer.optim import make_optimizer

CHECKPOINT_VERSION = 1
# On a GPU, losses and gradient norms reach the metrics every this many steps (and at each
# evaluation): reading them is a host synchronisation, which would stall the step queue.
METRICS_EVERY = 10
GRAPH_WARMUP = 3  # eager steps before a CUDA graph is captured (cuDNN autotuning, lazy init)
# Settings that define N(b): a checkpoint written under other values belongs to another run.
# Not `resident`: it serves the same images in the same order (bit for bit on the CPU).
IDENTITY = ("model", "dataset", "data_path", "lsun_classes", "image_size", "channels",
            "batch_size", "seed", "optimizer", "lr_g", "lr_d", "beta1_g", "beta2_g", "eps_g",
            "beta1_d", "beta2_d", "eps_d", "fid_threshold", "eval_every", "eval_samples",
            "real_samples", "extractor", "width", "z_dim", "n_critic", "gp_lambda",
            "ema_decay", "ema_start", "attention_res", "gns_every", "bf16", "reproducible_cpu")


class Terminated(Exception):
    """SIGTERM arrived; a checkpoint was saved (when a directory is set)."""


def interpolate_crossing(prev: tuple[int, float], cur: tuple[int, float],
                         threshold: float) -> float | None:
    """Step where the straight line through two (step, FID) evaluations crosses the threshold."""
    (s0, f0), (s1, f1) = prev, cur
    if not (f0 > threshold >= f1) or f0 == f1:
        return None
    return s0 + (f0 - threshold) / (f0 - f1) * (s1 - s0)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda requested but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _grad_norm(module: nn.Module) -> torch.Tensor:
    """Global gradient norm as a tensor: read it only when needed (reading it synchronises)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


@dataclass
class Progress:
    step: int = 0
    history: list[tuple[int, float]] | None = None
    reached_at: int | None = None
    interpolated: float | None = None
    elapsed: float = 0.0
    finished: bool = False


class Trial:
    """Models, optimizers, data and FID machinery of one trial; `run` trains it."""

    def __init__(self, cfg: TrainerConfig, metrics: TrainerMetrics | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.stop_requested = False
        if cfg.checkpoint_dir:
            checkpoint.check_directory(cfg.checkpoint_dir)
        self.device = resolve_device(cfg.device)
        if cfg.reproducible_cpu:
            numerics.pin_torch()
        self.hardware = numerics.hardware(self.device, cfg.reproducible_cpu)
        try:
            self.data = TrainingData(cfg.dataset, cfg.image_size, cfg.channels, cfg.data_path,
                                     cfg.lsun_classes, cfg.workers, cfg.resident, self.device,
                                     cfg.stats_cache)
        except (FileNotFoundError, RuntimeError, OSError) as e:
            raise ConfigError(f"data-path: cannot read {cfg.dataset} at {cfg.data_path}: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                              ) from None
        cuda = self.device.type == "cuda"
        if cuda:
            torch.backends.cudnn.benchmark = True  # fixed shapes: autotune each conv once
        torch.manual_seed(cfg.seed)
        nets = build(cfg.model, cfg.image_size, cfg.channels, cfg.width, cfg.z_dim,
                     self.data.num_classes, cfg.attention_res)
        self.conditional = nets.conditional
        self.G = nets.generator.to(self.device)
        self.D = nets.discriminator.to(self.device)
        if cuda:  # NHWC: cuDNN's tensor-core convolutions need no layout transposes
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        self.G_ema: nn.Module | None = None
        if cfg.model == "biggan":
            self.G_ema = copy.deepcopy(self.G).eval()
            for p in self.G_ema.parameters():
                p.requires_grad_(False)
        self.use_graph = cfg.cuda_graph and cuda
        self.opt_g = make_optimizer(cfg.optimizer, self.G.parameters(), cfg.lr_g, cfg.beta1_g,
                                    cfg.beta2_g, cfg.eps_g, self.device, self.use_graph)
        self.opt_d = make_optimizer(cfg.optimizer, self.D.parameters(), cfg.lr_d, cfg.beta1_d,
                                    cfg.beta2_d, cfg.eps_d, self.device, self.use_graph)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        # On a GPU the training noise is drawn there (a CPU draw costs a blocking copy per
        # step); on the CPU it is the CPU generator, as before.
        self.dev_gen = (torch.Generator(device=self.device).manual_seed(cfg.seed) if cuda
                        else self.gen)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_out: tuple[torch.Tensor, ...] | None = None
        self._static: tuple[torch.Tensor, torch.Tensor] | None = None
        self._eager_graph_steps = 0
        self.gns = GradientNoiseScale()
        self.generator_params = count_params(self.G)
        self.progress = Progress(history=[])
        self.losses: dict[str, float | torch.Tensor] = {}
        eval_gen = torch.Generator().manual_seed(cfg.seed + 0x0E7A1)
        self.eval_z = torch.randn(cfg.eval_samples, cfg.z_dim, generator=eval_gen)
        self.eval_y = torch.randint(self.data.num_classes, (cfg.eval_samples,),
                                    generator=eval_gen)
        self.extractor = load_extractor(cfg.extractor, cfg.dataset,
                                        cfg.allow_download).to(self.device)
        key = stats_key(self.data.key, self.extractor, cfg.real_samples)
        self.real_mu, self.real_sigma = cached_real_stats(
            cfg.stats_cache, key,
            lambda: feature_stats(self.extractor, self.data.real_images(cfg.real_samples),
                                  self.device))
        self.reference = FrechetReference(self.real_mu, self.real_sigma)

    # -- state ---------------------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        return {k: getattr(self.cfg, k) for k in IDENTITY}

    def state_dict(self) -> dict[str, Any]:
        p = self.progress
        return {
            "version": CHECKPOINT_VERSION,
            "identity": self.identity(),
            "step": p.step, "history": list(p.history or []), "reached_at": p.reached_at,
            "interpolated": p.interpolated, "elapsed": p.elapsed, "finished": p.finished,
            "G": self.G.state_dict(), "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict() if self.G_ema is not None else None,
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
            "dev_gen": self.dev_gen.get_state() if self.dev_gen is not self.gen else None,
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "gns": self.gns.state_dict(), "losses": self.loss_values(),
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        if s.get("version") != CHECKPOINT_VERSION:
            raise ConfigError(f"checkpoint-dir: checkpoint version {s.get('version')!r} is not "
                              f"{CHECKPOINT_VERSION}")
        mine = self.identity()
        # Checkpoints from before the flag existed were written with unpinned numerics.
        for k, v in {"reproducible_cpu": False, **s["identity"]}.items():
            if mine.get(k) != v:
                raise ConfigError(f"checkpoint-dir: holds a run with {k.replace('_', '-')} = "
                                  f"{v!r}, this run has {mine.get(k)!r}")
        self.G.load_state_dict(s["G"])
        self.D.load_state_dict(s["D"])
        if self.G_ema is not None and s["G_ema"] is not None:
            self.G_ema.load_state_dict(s["G_ema"])
        self.opt_g.load_state_dict(s["opt_g"])
        self.opt_d.load_state_dict(s["opt_d"])
        self.gen.set_state(s["gen"])
        if self.dev_gen is not self.gen and s.get("dev_gen") is not None:
            self.dev_gen.set_state(s["dev_gen"])
        torch.set_rng_state(s["torch_rng"])
        if s["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda_rng"])
        self.gns.load_state_dict(s["gns"])
        self.losses = dict(s.get("losses", {}))
        self.progress = Progress(s["step"], [tuple(h) for h in s["history"]], s["reached_at"],
                                 s["interpolated"], s["elapsed"], s["finished"])

    # -- training ------------------------------------------------------------------------------

    def loss_values(self) -> dict[str, float]:
        """The last step's losses and gradient norms as numbers (a host synchronisation)."""
        return {k: float(v) for k, v in self.losses.items()}

    def _autocast(self) -> contextlib.AbstractContextManager:
        # No weight cache: cached casts would go stale across CUDA-graph replays.
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16,
                              cache_enabled=False)

    def _noise(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.dev_gen is self.gen:
            z = torch.randn(n, self.cfg.z_dim, generator=self.gen).to(self.device)
        else:
            z = torch.empty(n, self.cfg.z_dim, device=self.device).normal_(
                generator=self.dev_gen)
        y = None
        if self.conditional:
            y = torch.randint(self.data.num_classes, (n,), generator=self.gen).to(self.device)
        return z, y

    def _losses(self) -> tuple[Callable, Callable]:
        if self.cfg.model == "dcgan":
            return dcgan.d_loss, dcgan.g_loss
        if self.cfg.model == "wgan-gp":
            return wgan.critic_loss, wgan.generator_loss
        return biggan.d_loss, biggan.g_loss

    def train_step(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """One discriminator update (n_critic for WGAN-GP/BigGAN) and one generator update.

        Nothing here reads a value back to the host: losses and norms stay tensors.
        """
        cfg, G, D = self.cfg, self.G, self.D
        if cfg.model == "dcgan":
            x, y = next(batches)
            if self.use_graph:
                out = self._graph_step(x)
            else:
                z, yf = self._noise(cfg.batch_size)
                out = self._dcgan_step(x, y, z, yf)
            loss_g, loss_d, gg, gd = out
        else:
            d_loss_fn, g_loss_fn = self._losses()
            b = cfg.batch_size
            D.requires_grad_(True)
            for _ in range(cfg.n_critic):
                x, y = next(batches)
                z, yf = self._noise(b)
                with torch.no_grad(), self._autocast():
                    fake = G(z, yf)
                self.opt_d.zero_grad(set_to_none=True)
                with self._autocast():
                    loss_d = d_loss_fn(D(x, y), D(fake, yf))
                    if cfg.model == "wgan-gp":
                        loss_d = loss_d + wgan.gradient_penalty(D, x, fake, cfg.gp_lambda,
                                                                self.gen, y)
                loss_d.backward()
                gd = _grad_norm(D)
                self.opt_d.step()
            z, yf = self._noise(b)
            with self._autocast():
                fake = G(z, yf)
            D.requires_grad_(False)
            self.opt_g.zero_grad(set_to_none=True)
            with self._autocast():
                loss_g = g_loss_fn(D(fake, yf))
            loss_g.backward()
            gg = _grad_norm(G)
            self.opt_g.step()
            loss_g, loss_d = loss_g.detach(), loss_d.detach()
        if self.G_ema is not None:
            self._update_ema()
        self.losses = {"generator": loss_g, "discriminator": loss_d,
                       "grad_generator": gg, "grad_discriminator": gd}

    def _dcgan_step(self, x: torch.Tensor, y: torch.Tensor | None, z: torch.Tensor,
                    yf: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """The paper's DCGAN step on given data and noise; also the body a CUDA graph captures."""
        G, D = self.G, self.D
        D.requires_grad_(True)
        with self._autocast():
            fake = G(z, yf)
        self.opt_d.zero_grad(set_to_none=True)
        with self._autocast():
            loss_d = dcgan.d_loss(D(x, y), D(fake.detach(), yf))
        loss_d.backward()
        gd = _grad_norm(D)
        self.opt_d.step()
        D.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        with self._autocast():
            loss_g = dcgan.g_loss(D(fake, yf))
        loss_g.backward()
        gg = _grad_norm(G)
        self.opt_g.step()
        return loss_g.detach(), loss_d.detach(), gg, gd

    def _graph_step(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The DCGAN step replayed as one CUDA graph: one launch instead of hundreds.

        Data and noise go into static buffers outside the graph. The first GRAPH_WARMUP steps
        run eagerly on a side stream (real steps, as the capture recipe asks); the next one
        is captured and then replayed, so every step trains exactly once.
        """
        if self._static is None:
            self._static = (torch.empty_like(x), torch.empty(
                self.cfg.batch_size, self.cfg.z_dim, device=self.device))
        sx, sz = self._static
        sx.copy_(x)
        sz.normal_(generator=self.dev_gen)
        if self._graph is None:
            main = torch.cuda.current_stream()
            if self._eager_graph_steps < GRAPH_WARMUP:
                side = torch.cuda.Stream()
                side.wait_stream(main)
                with torch.cuda.stream(side):
                    out = self._dcgan_step(sx, None, sz, None)
                main.wait_stream(side)
                self._eager_graph_steps += 1
                return out
            self.opt_d.zero_grad(set_to_none=True)  # gradients then live in the graph's pool
            self.opt_g.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._graph_out = self._dcgan_step(sx, None, sz, None)
            self._graph = graph
        self._graph.replay()
        assert self._graph_out is not None
        return self._graph_out

    @torch.no_grad()
    def _update_ema(self) -> None:
        assert self.G_ema is not None
        decay = 0.0 if self.progress.step < self.cfg.ema_start else self.cfg.ema_decay
        for pe, p in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
            pe.lerp_(p, 1.0 - decay)
        for be, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
            be.copy_(b)

    def measure_noise_scale(self) -> float | None:
        """B_simple from the generator's gradients on the two halves of one extra minibatch.

        |g_half|^2 (averaged over the halves) is the small-batch norm at b/2 and the norm of
        their mean the big-batch one at b. The noise comes from a generator seeded by the
        step, so the measurement never shifts the training's random stream.
        """
        half = self.cfg.batch_size // 2
        if half < 1:
            return self.gns.value
        g = torch.Generator().manual_seed(self.cfg.seed * 7_777_777 + self.progress.step)
        z = torch.randn(2 * half, self.cfg.z_dim, generator=g).to(self.device)
        y = torch.randint(self.data.num_classes, (2 * half,), generator=g).to(self.device)
        y = y if self.conditional else None
        _, g_loss_fn = self._losses()
        params = [p for p in self.G.parameters() if p.requires_grad]
        self.D.requires_grad_(False)
        halves = []
        for part in (slice(0, half), slice(half, 2 * half)):
            loss = g_loss_fn(self.D(self.G(z[part], None if y is None else y[part]),
                                    None if y is None else y[part]))
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            halves.append([torch.zeros_like(p) if gr is None else gr
                           for gr, p in zip(grads, params, strict=True)])
        sq = [float(sum((gr.double() ** 2).sum() for gr in h)) for h in halves]
        big = float(sum(((a.double() + b.double()) / 2).pow(2).sum()
                        for a, b in zip(*halves, strict=True)))
        return self.gns.update(sum(sq) / 2, big, half, 2 * half)

    @torch.no_grad()
    def evaluate(self) -> float:
        """FID of eval_samples generated images (fixed noise) against the real statistics."""
        net = self.G_ema if self.G_ema is not None else self.G
        mu, sigma = generated_stats(net, self.extractor, self.eval_z,
                                    self.eval_y if self.conditional else None, self.device)
        return self.reference.distance(mu, sigma)

    def _save(self) -> None:
        if self.cfg.checkpoint_dir:
            checkpoint.save(self.cfg.checkpoint_dir, self.state_dict())

    def restore(self) -> bool:
        """Resume from the checkpoint directory when it holds a usable checkpoint; True if it did.

        An unreadable one is set aside and the trial starts from step 0 (checkpoint.resume).
        """
        if not self.cfg.checkpoint_dir:
            return False
        return checkpoint.resume(self.cfg.checkpoint_dir, self.load_state_dict, self.state_dict,
                                 self.log)

    def run(self) -> dict[str, Any]:
        """Train to the threshold or the budget; the contract's result object."""
        cfg, p = self.cfg, self.progress
        if p.finished and p.reached_at is None and p.step < cfg.max_steps:
            p.finished = False  # a censored run resumed with a larger budget trains on
        if self.metrics is not None:
            self.metrics.static(self.generator_params, self.data.size, cfg.max_steps,
                                cfg.fid_threshold)
            self.metrics.hardware(self.hardware)
            self.metrics.step(p.step, p.step * cfg.batch_size)
            if p.history:
                self.metrics.evaluation(p.history[-1][1])
            if p.reached_at is not None:
                self.metrics.reached(p.reached_at, p.interpolated)
            self.metrics.noise_scale(self.gns.value)
        batches = self.data.batches(cfg.seed, cfg.batch_size, p.step * self._batches_per_step(),
                                    self.device)
        t_start = time.perf_counter()
        elapsed0 = p.elapsed
        self.G.train()
        self.D.train()
        while not p.finished:
            if self.stop_requested:
                p.elapsed = elapsed0 + time.perf_counter() - t_start
                self._save()
                raise Terminated()
            t0 = time.perf_counter()
            self.train_step(batches)
            p.step += 1
            if cfg.gns_every and p.step % cfg.gns_every == 0:
                value = self.measure_noise_scale()
                if self.metrics is not None:
                    self.metrics.noise_scale(value)
            dt = time.perf_counter() - t0
            evaluating = p.step % cfg.eval_every == 0 or p.step >= cfg.max_steps
            if self.metrics is not None:
                self.metrics.step(p.step, cfg.batch_size, dt)
                if (self.device.type == "cpu" or evaluating or p.step % METRICS_EVERY == 0
                        or self.stop_requested):
                    v = self.loss_values()
                    self.metrics.network("generator", v["generator"], v["grad_generator"])
                    self.metrics.network("discriminator", v["discriminator"],
                                         v["grad_discriminator"])
            if evaluating:
                self._after_evaluation(self.evaluate())
            if p.reached_at is not None or p.step >= cfg.max_steps:
                p.finished = True
            p.elapsed = elapsed0 + time.perf_counter() - t_start
            if p.finished or (cfg.checkpoint_every and p.step % cfg.checkpoint_every == 0):
                self._save()
        if self.metrics is not None:
            self.metrics.finished()
        return self.result()

    def _batches_per_step(self) -> int:
        return 1 if self.cfg.model == "dcgan" else self.cfg.n_critic

    def _after_evaluation(self, fid: float) -> None:
        cfg, p = self.cfg, self.progress
        assert p.history is not None
        prev = p.history[-1] if p.history else None
        p.history.append((p.step, fid))
        if self.metrics is not None:
            self.metrics.evaluation(fid)
        gns = self.gns.value
        losses = self.loss_values()
        self.log(f"step {p.step} fid {fid:.3f} (threshold {cfg.fid_threshold:g}) "
                 f"loss_g {losses['generator']:.3f} loss_d "
                 f"{losses['discriminator']:.3f}"
                 + (f" gns {gns:.1f}" if gns is not None else ""))
        if fid <= cfg.fid_threshold and p.reached_at is None:
            p.reached_at = p.step
            p.interpolated = (interpolate_crossing(prev, (p.step, fid), cfg.fid_threshold)
                              if prev else None)
            if self.metrics is not None:
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
            "hardware": self.hardware,
        }
