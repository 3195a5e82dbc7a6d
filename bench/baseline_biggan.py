"""The BigGAN baseline: a step written the way the authors' BigGAN-PyTorch does it
(`train_fns.GAN_training_function`, its `G_D` wrapper, hinge losses and `ema` class).

Eager fp32, a CPU DataLoader feeding the device (pinned on a GPU, as there), `toggle_grad`
around each network's update, noise and fake labels resampled in place on the device
(`z_.sample_()`, `y_.sample_()`), D run once on the concatenation of the fake and the real
batch, the EMA of G updated per `state_dict` entry every step (`ema.update(itr)`, averaging
from its start step) and `float(loss.item())` on three losses every step, which synchronises
the host with the device.

The networks are the trainer's own (`critbatch_trainer.models.build`: spectral norm,
conditional batch norm, self-attention, projection discriminator), so both sides train the
same architecture and the ratio measures the step.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from critbatch_trainer.models import build


def toggle_grad(model: nn.Module, on_or_off: bool) -> None:
    for param in model.parameters():
        param.requires_grad = on_or_off


def discriminator_loss(dis_fake: torch.Tensor,
                       dis_real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hinge loss for D: (real part, fake part)."""
    return torch.mean(F.relu(1.0 - dis_real)), torch.mean(F.relu(1.0 + dis_fake))


def generator_loss(dis_fake: torch.Tensor) -> torch.Tensor:
    return -torch.mean(dis_fake)


class GD(nn.Module):
    """G and D as one module; with real data, D sees [G(z), x] in one batch."""

    def __init__(self, G: nn.Module, D: nn.Module) -> None:
        super().__init__()
        self.G, self.D = G, D

    def forward(self, z: torch.Tensor, gy: torch.Tensor, x: torch.Tensor | None = None,
                dy: torch.Tensor | None = None,
                train_G: bool = False) -> torch.Tensor | tuple[torch.Tensor, ...]:
        with torch.set_grad_enabled(train_G):
            G_z = self.G(z, gy)
        D_input = torch.cat([G_z, x], 0) if x is not None else G_z
        D_class = torch.cat([gy, dy], 0) if dy is not None else gy
        D_out = self.D(D_input, D_class)
        if x is not None:
            return torch.split(D_out, [G_z.shape[0], x.shape[0]])  # D_fake, D_real
        return D_out


class Ema:
    """The authors' `ema`: target = decay * target + (1 - decay) * source, per state entry."""

    def __init__(self, source: nn.Module, target: nn.Module, decay: float = 0.9999,
                 start_itr: int = 0) -> None:
        self.decay, self.start_itr = decay, start_itr
        self.source_dict = source.state_dict()
        self.target_dict = target.state_dict()
        with torch.no_grad():
            for key in self.source_dict:
                self.target_dict[key].data.copy_(self.source_dict[key].data)

    def update(self, itr: int | None = None) -> None:
        decay = 0.0 if itr and itr < self.start_itr else self.decay
        with torch.no_grad():
            for key in self.source_dict:
                self.target_dict[key].data.copy_(self.target_dict[key].data * decay
                                                 + self.source_dict[key].data * (1 - decay))


class BigGanBaseline:
    """The authors' training function, one iteration (num_D_steps D updates, one G update,
    one EMA update) per call."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 device: torch.device, workers: int = 0, *, width: int = 96, z_dim: int = 120,
                 num_classes: int = 10, attention_res: int = 64, lr_g: float = 1e-4,
                 lr_d: float = 4e-4, num_D_steps: int = 1, ema_decay: float = 0.9999,
                 ema_start: int = 1000) -> None:
        self.device, self.b, self.num_D_steps, self.num_classes = (device, batch_size,
                                                                   num_D_steps, num_classes)
        nets = build("biggan", image_size=images.shape[-1], channels=images.shape[1],
                     width=width, z_dim=z_dim, num_classes=num_classes,
                     attention_res=attention_res)
        self.G, self.D = nets.generator.to(device), nets.discriminator.to(device)
        self.G_ema = copy.deepcopy(self.G)
        self.ema = Ema(self.G, self.G_ema, ema_decay, ema_start)
        self.G_D = GD(self.G, self.D)
        self.G_optim = torch.optim.Adam(self.G.parameters(), lr=lr_g, betas=(0.0, 0.999),
                                        weight_decay=0, eps=1e-6)
        self.D_optim = torch.optim.Adam(self.D.parameters(), lr=lr_d, betas=(0.0, 0.999),
                                        weight_decay=0, eps=1e-6)
        self.z_ = torch.randn(batch_size, z_dim, device=device)
        self.y_ = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size,
                                 shuffle=True, drop_last=True, num_workers=workers,
                                 pin_memory=device.type == "cuda",
                                 persistent_workers=workers > 0)
        self.it = iter(self.loader)
        self.itr = 0
        self.log: dict[str, float] = {}

    def _sample(self) -> None:
        self.z_.normal_()
        self.y_.random_(0, self.num_classes)

    def _next(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            x, y = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            x, y = next(self.it)
        return x.to(self.device), y.to(self.device)

    def step(self) -> None:
        self.G_optim.zero_grad()
        self.D_optim.zero_grad()
        toggle_grad(self.D, True)
        toggle_grad(self.G, False)
        for _ in range(self.num_D_steps):
            self.D_optim.zero_grad()
            x, y = self._next()
            self._sample()
            D_fake, D_real = self.G_D(self.z_, self.y_, x, y, train_G=False)
            D_loss_real, D_loss_fake = discriminator_loss(D_fake, D_real)
            (D_loss_real + D_loss_fake).backward()
            self.D_optim.step()
        toggle_grad(self.D, False)
        toggle_grad(self.G, True)
        self.G_optim.zero_grad()
        self._sample()
        G_loss = generator_loss(self.G_D(self.z_, self.y_, train_G=True))
        G_loss.backward()
        self.G_optim.step()
        self.itr += 1
        self.ema.update(self.itr)
        self.log = {"G_loss": float(G_loss.item()), "D_loss_real": float(D_loss_real.item()),
                    "D_loss_fake": float(D_loss_fake.item())}  # per-step host sync
