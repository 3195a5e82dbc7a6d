"""The two networks of one trial, their TTUR optimizers and random generators, and one step.

What differs between the models (losses, gradient penalty, discriminator steps per generator
step, class labels, EMA) comes from the model's Recipe, chosen once here. Nothing in a step
reads a value back to the host: losses and gradient norms stay tensors until asked for.

Everything random in training (noise, fake labels, penalty interpolation) comes from one
seeded generator, `device_rng` (on the CPU the CPU generator `rng`), plus the stateless data
order, and all of it is checkpointed, so a resumed run follows the uninterrupted one step for
step.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any, NamedTuple, TypeVar

import torch
from torch import nn

from critbatch_trainer.distributed import World, global_batch_norm, local_statistics
from critbatch_trainer.models import build
from critbatch_trainer.models.biggan import fuse_attention
from critbatch_trainer.optim import make_optimizer
from critbatch_trainer.settings import TrainerConfig

GRAPH_WARMUP = 3  # eager steps before a CUDA graph is captured (cuDNN autotuning, lazy init)
Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]
T = TypeVar("T", "CriticInputs", "Noise")
StepOut = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # loss/grad g, d


class CriticInputs(NamedTuple):
    """What one discriminator update consumes: real images and labels, G's noise and fake
    labels, the penalty's interpolation weights (None where unused)."""

    x: torch.Tensor
    y: torch.Tensor | None
    z: torch.Tensor
    yf: torch.Tensor | None
    eps: torch.Tensor | None


class Noise(NamedTuple):
    z: torch.Tensor
    yf: torch.Tensor | None


class Draw(NamedTuple):
    """Everything random one step consumes, drawn before its arithmetic: a CUDA graph replays
    its captured work as it was, so the batches and the random numbers must be drawn outside
    it and copied in."""

    critic: tuple[CriticInputs, ...]
    generator: Noise | None  # G's update's own noise; None: it reuses the critic's fake batch

    def tensors(self) -> list[torch.Tensor]:
        parts = [*self.critic, *([self.generator] if self.generator is not None else [])]
        return [t for part in parts for t in part if t is not None]

    def empty_like(self) -> Draw:
        """Buffers of the same shapes, to copy each step's draw into."""
        def like(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else torch.empty_like(t)
        return Draw(tuple(CriticInputs._make(map(like, c)) for c in self.critic),
                    None if self.generator is None else Noise._make(map(like, self.generator)))


def grad_norm(module: nn.Module) -> torch.Tensor:
    """Global gradient norm as a tensor: read it only when needed (reading it synchronises)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


class Gan:
    """Generator G, discriminator D (and G's EMA when the recipe keeps one), their optimizers
    and random generators; `train_step` is one TTUR update of both."""

    def __init__(self, cfg: TrainerConfig, *, device: torch.device, num_classes: int,
                 world: World | None = None) -> None:
        """`world`: the trial's data-parallel workers; this one trains on its shard of each
        global batch (critbatch_trainer.distributed)."""
        self.cfg, self.device, self.num_classes = cfg, device, num_classes
        self.world = world or World()
        self.shard = self.world.shard(cfg.batch_size)
        cuda = device.type == "cuda"
        torch.manual_seed(cfg.seed)
        nets = build(cfg.model, image_size=cfg.image_size, channels=cfg.channels,
                     width=cfg.width, z_dim=cfg.z_dim, num_classes=num_classes,
                     attention_res=cfg.attention_res)
        self.recipe = nets.recipe
        G, D = nets.generator, nets.discriminator
        if cfg.recompute_activations:
            G.recompute = D.recompute = True
        if cfg.fused_attention:
            fuse_attention(G, D)
        if self.world.parallel:
            G, D = global_batch_norm(G), global_batch_norm(D)
        self.G = G.to(device)
        self.D = D.to(device)
        if cuda:  # NHWC: cuDNN's tensor-core convolutions need no layout transposes
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        self.G_ema: nn.Module | None = None
        if self.recipe.ema:
            self.G_ema = copy.deepcopy(self.G).eval()
            for p in self.G_ema.parameters():
                p.requires_grad_(False)
        self.use_graph = cfg.cuda_graph and cuda and not self.world.parallel
        self.opt_g = make_optimizer(cfg.optimizer, self.G.parameters(), lr=cfg.lr_g,
                                    beta1=cfg.beta1_g, beta2=cfg.beta2_g, eps=cfg.eps_g,
                                    device=device, capturable=self.use_graph)
        self.opt_d = make_optimizer(cfg.optimizer, self.D.parameters(), lr=cfg.lr_d,
                                    beta1=cfg.beta1_d, beta2=cfg.beta2_d, eps=cfg.eps_d,
                                    device=device, capturable=self.use_graph)
        self.rng = torch.Generator().manual_seed(cfg.seed)
        # On a GPU a step's random numbers are drawn there (a CPU draw costs a blocking copy
        # per step); on the CPU it is the CPU generator.
        self.device_rng = (torch.Generator(device=device).manual_seed(cfg.seed) if cuda
                           else self.rng)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_out: StepOut | None = None
        self._static: Draw | None = None
        self._eager_graph_steps = 0
        self.losses: dict[str, float | torch.Tensor] = {}

    @property
    def batches_per_step(self) -> int:
        """Data batches one step consumes."""
        return 1 if self.recipe.shared_fake else self.cfg.n_critic

    @property
    def evaluated(self) -> nn.Module:
        """The generator whose samples are scored: its EMA when the recipe keeps one."""
        return self.G_ema if self.G_ema is not None else self.G

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The networks', optimizers' and random generators' part of a checkpoint (`gen` and
        `dev_gen` are the checkpoint format's names of `rng` and `device_rng`)."""
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return {
            "G": self.G.state_dict(), "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict() if self.G_ema is not None else None,
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "gen": self.rng.get_state(), "torch_rng": torch.get_rng_state(),
            "dev_gen": self.device_rng.get_state() if self.device_rng is not self.rng else None,
            "cuda_rng": cuda_rng, "losses": self.loss_values(),
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.G.load_state_dict(s["G"])
        self.D.load_state_dict(s["D"])
        if self.G_ema is not None and s["G_ema"] is not None:
            self.G_ema.load_state_dict(s["G_ema"])
        self.opt_g.load_state_dict(s["opt_g"])
        self.opt_d.load_state_dict(s["opt_d"])
        self.rng.set_state(s["gen"])
        if self.device_rng is not self.rng and s.get("dev_gen") is not None:
            self.device_rng.set_state(s["dev_gen"])
        torch.set_rng_state(s["torch_rng"])
        if s["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda_rng"])

    def loss_values(self) -> dict[str, float]:
        """The last step's losses and gradient norms as numbers (a host synchronisation)."""
        return {k: float(v) for k, v in self.losses.items()}

    # -- training ------------------------------------------------------------------------------

    def train_step(self, batches: Batches, steps_done: int) -> None:
        """One TTUR update of D (n_critic of them where the recipe alternates) and of G;
        `steps_done` (before this one) decides whether the EMA averages yet."""
        if self.use_graph:
            loss_g, loss_d, gg, gd = self._graph_step(batches)
        else:
            loss_g, loss_d, gg, gd = self._train(self._draw(batches))
        loss_g, loss_d = self.world.mean([loss_g, loss_d])
        if self.G_ema is not None:
            self._update_ema(steps_done)
        self.losses = {"generator": loss_g, "discriminator": loss_d,
                       "grad_generator": gg, "grad_discriminator": gd}

    def _autocast(self) -> contextlib.AbstractContextManager:
        # No weight cache: cached casts would go stale across CUDA-graph replays.
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16,
                              cache_enabled=False)

    def _noise(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This worker's rows of the noise (and fake labels) of a global batch of n."""
        z = torch.randn(n, self.cfg.z_dim, generator=self.device_rng, device=self.device)
        y = None
        if self.recipe.conditional:
            y = self.shard.take(torch.randint(self.num_classes, (n,), generator=self.device_rng,
                                              device=self.device))
        return self.shard.take(z), y

    def _draw(self, batches: Batches) -> Draw:
        """This step's data and random numbers, drawn from each generator in the step's order
        (a resumed run draws the same)."""
        critic = []
        for _ in range(self.batches_per_step):
            x, y = next(batches)
            z, yf = self._noise(self.cfg.batch_size)
            eps = None
            if self.recipe.penalty is not None:
                eps = self.shard.take(torch.rand(self.cfg.batch_size, 1, 1, 1, device=self.device,
                                                 generator=self.device_rng))
            critic.append(CriticInputs(x, y if self.recipe.conditional else None, z, yf, eps))
        noise = None if self.recipe.shared_fake else Noise(*self._noise(self.cfg.batch_size))
        return Draw(tuple(critic), noise)

    def _train(self, d: Draw) -> StepOut:
        """The step's arithmetic on drawn inputs, run eagerly or captured as a CUDA graph: one
        D update per critic input, on fresh fakes, then one G update on fresh noise; or the
        paper's DCGAN step, whose one fake batch serves both updates."""
        self.D.requires_grad_(True)
        if d.generator is None:
            (c,) = d.critic
            with self._autocast():
                fake = self.G(c.z, c.yf)
            loss_d, gd = self._update_d([(c, fake.detach())])
            loss_g, gg = self._update_g([Noise(c.z, c.yf)], fake)
            return loss_g, loss_d, gg, gd
        for c in d.critic:
            parts = self._micro_batches(c)
            with torch.no_grad(), self._autocast():
                fakes = [self.G(p.z, p.yf) for p in parts]
            loss_d, gd = self._update_d(list(zip(parts, fakes, strict=True)))
        loss_g, gg = self._update_g(self._micro_batches(d.generator))
        return loss_g, loss_d, gg, gd

    def _micro_batches(self, inputs: T) -> list[T]:
        """`inputs` (a CriticInputs or Noise) cut into micro-batches of at most --micro-batch
        rows: one pass each, so only one micro-batch's activations are held at a time."""
        return [type(inputs)._make(None if t is None else t[s] for t in inputs)
                for s in self._slices(len(inputs[0]))]

    def _slices(self, n: int) -> list[slice]:
        m = self.cfg.micro_batch or n
        return [slice(i, min(i + m, n)) for i in range(0, n, m)]

    @staticmethod
    def _backward(passes: Iterator[tuple[torch.Tensor, int]], n: int) -> torch.Tensor:
        """Backpropagate each pass's loss, weighted by its share of the batch's n rows, one pass
        at a time (the generator computes the next one only then); the batch's loss."""
        total = None
        for loss, rows in passes:
            if rows != n:
                loss = loss * (rows / n)
            loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        assert total is not None
        return total

    def _update_d(self, parts: list[tuple[CriticInputs, torch.Tensor]]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """One discriminator update on real and fake batches, the micro-batches of one batch;
        (loss, gradient norm)."""
        self.opt_d.zero_grad(set_to_none=True)
        loss_d = self._backward(((self._d_loss(c, fake), len(c.x)) for c, fake in parts),
                                sum(len(c.x) for c, _ in parts))
        self.world.average_gradients(self.D)
        gd = grad_norm(self.D)
        self.opt_d.step()
        return loss_d, gd

    def _d_loss(self, c: CriticInputs, fake: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            loss = self.recipe.d_loss(*self._d_scores(c.x, c.y, fake, c.yf))
            if self.recipe.penalty is not None:
                assert c.eps is not None
                loss = loss + self.recipe.penalty(self.D, c.x, fake, self.cfg.gp_lambda, c.eps,
                                                  c.y)
        return loss

    def _d_scores(self, x: torch.Tensor, y: torch.Tensor | None, fake: torch.Tensor,
                  yf: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """D's scores of the real and the fake batch, in one pass where the recipe asks."""
        if not self.recipe.joint_d:
            return self.D(x, y), self.D(fake, yf)
        labels = None if y is None or yf is None else torch.cat([y, yf])
        scores = self.D(torch.cat([x, fake]), labels)
        real, fake_scores = scores.split([x.shape[0], fake.shape[0]])
        return real, fake_scores

    def _update_g(self, parts: list[Noise], fake: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """One generator update through D's scores of G's samples of each part's noise (the
        micro-batches of one batch), or of the given `fake`; (loss, gradient norm)."""
        self.D.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g = self._backward(((self._g_loss(p, fake), len(p.z)) for p in parts),
                                sum(len(p.z) for p in parts))
        self.world.average_gradients(self.G)
        gg = grad_norm(self.G)
        self.opt_g.step()
        return loss_g, gg

    def _g_loss(self, p: Noise, fake: torch.Tensor | None) -> torch.Tensor:
        with self._autocast():
            return self.recipe.g_loss(self.D(self.G(p.z, p.yf) if fake is None else fake, p.yf))

    def _graph_step(self, batches: Batches) -> StepOut:
        """The step replayed as one CUDA graph: one launch instead of hundreds.

        The step's data and random numbers are drawn as for the eager step and copied into
        static buffers outside the graph. The first GRAPH_WARMUP steps run eagerly on a side
        stream (real steps, as the capture recipe asks); the next one is captured and then
        replayed, so every step trains exactly once.
        """
        draw = self._draw(batches)
        if self._static is None:
            self._static = draw.empty_like()
        for static, value in zip(self._static.tensors(), draw.tensors(), strict=True):
            static.copy_(value)
        if self._graph is None:
            main = torch.cuda.current_stream()
            if self._eager_graph_steps < GRAPH_WARMUP:
                side = torch.cuda.Stream()
                side.wait_stream(main)
                with torch.cuda.stream(side):
                    out = self._train(self._static)
                main.wait_stream(side)
                self._eager_graph_steps += 1
                return out
            self.opt_d.zero_grad(set_to_none=True)  # gradients then live in the graph's pool
            self.opt_g.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._graph_out = self._train(self._static)
            self._graph = graph
        self._graph.replay()
        assert self._graph_out is not None
        return self._graph_out

    @torch.no_grad()
    def _update_ema(self, steps_done: int) -> None:
        assert self.G_ema is not None
        decay = 0.0 if steps_done < self.cfg.ema_start else self.cfg.ema_decay
        torch._foreach_lerp_(list(self.G_ema.parameters()), list(self.G.parameters()),
                             1.0 - decay)
        torch._foreach_copy_(list(self.G_ema.buffers()), list(self.G.buffers()))

    def noise_scale_norms(self, step: int) -> tuple[float, float, int] | None:
        """(|g_small|^2, |g_big|^2, b_small) of the generator's gradients on the two halves of
        one extra minibatch, or None below a batch of 2 (docs/science.md, the noise scale).

        |g_half|^2 (averaged over the halves) is the small-batch norm at b/2 and the norm of
        their mean the big-batch one at b. The noise comes from a generator seeded by the
        step, so the measurement never shifts the training's random stream.
        """
        half = self.cfg.batch_size // 2
        if half < 1:
            return None
        noise_rng = torch.Generator().manual_seed(self.cfg.seed * 7_777_777 + step)
        z = torch.randn(2 * half, self.cfg.z_dim, generator=noise_rng).to(self.device)
        y = torch.randint(self.num_classes, (2 * half,), generator=noise_rng).to(self.device)
        labels = y if self.recipe.conditional else None
        params = [p for p in self.G.parameters() if p.requires_grad]
        self.D.requires_grad_(False)
        halves = []
        with local_statistics(self.G), local_statistics(self.D):
            for start in (0, half):
                grads = [torch.zeros_like(p) for p in params]
                parts = self._slices(half)
                for s in parts:
                    rows = slice(start + s.start, start + s.stop)
                    part_labels = None if labels is None else labels[rows]
                    loss = self.recipe.g_loss(self.D(self.G(z[rows], part_labels), part_labels))
                    if len(parts) > 1:
                        loss = loss * ((s.stop - s.start) / half)
                    for acc, gr in zip(grads, torch.autograd.grad(loss, params, allow_unused=True),
                                       strict=True):
                        if gr is not None:
                            acc += gr
                halves.append(grads)
        sq = [float(sum((gr.double() ** 2).sum() for gr in h)) for h in halves]
        big = float(sum(((a.double() + b.double()) / 2).pow(2).sum()
                        for a, b in zip(*halves, strict=True)))
        return sum(sq) / 2, big, half
