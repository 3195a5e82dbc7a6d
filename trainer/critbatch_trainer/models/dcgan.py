"""DCGAN (Radford et al. 2016) as in PyTorch's reference example, for any power-of-two size.

At 64x64 with z=100 and width 64 this is the paper's network exactly; smaller sizes drop
the widest layers (each halving of the image removes one up/down-sampling stage).
"""

from __future__ import annotations

import math
from enum import StrEnum

import torch
from torch import nn
from torch.nn import functional as F

from critbatch_trainer.models.recipe import NetworkShape, Recipe


class Norm(StrEnum):
    """The normalisation of a discriminator's inner layers."""

    BATCH = "batch"  # DCGAN
    # The WGAN-GP critic: a gradient penalty per sample is ill-defined under batch norm
    # (Gulrajani et al. 2017 sec. 4).
    LAYER = "layer"
    NONE = "none"


def _stages(image_size: int) -> int:
    """Number of stride-2 stages between 4x4 and the image size."""
    return int(math.log2(image_size)) - 2


def init_weights(module: nn.Module) -> None:
    """DCGAN init: conv weights N(0, 0.02), norm gains N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """z (N, z_dim) -> image (N, channels, size, size) in [-1, 1]."""

    def __init__(self, image_size: int = 64, channels: int = 3, z_dim: int = 100,
                 width: int = 64) -> None:
        super().__init__()
        self.z_dim = z_dim
        n = _stages(image_size)
        ch = width * 2 ** (n - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim, ch, 4, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)
        ]
        for _ in range(n - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.z_dim, 1, 1))


class Discriminator(nn.Module):
    """image -> one logit per sample (no sigmoid: BCE-with-logits, or a WGAN critic)."""

    def __init__(self, image_size: int = 64, channels: int = 3, width: int = 64,
                 norm: Norm = Norm.BATCH) -> None:
        super().__init__()
        norm = Norm(norm)
        n = _stages(image_size)
        ch = width
        layers: list[nn.Module] = [nn.Conv2d(channels, ch, 4, 2, 1, bias=False),
                                   nn.LeakyReLU(0.2, True)]
        for _ in range(n - 1):
            layers.append(nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False))
            if norm == Norm.BATCH:
                layers.append(nn.BatchNorm2d(ch * 2))
            elif norm == Norm.LAYER:
                layers.append(nn.GroupNorm(1, ch * 2))
            layers.append(nn.LeakyReLU(0.2, True))
            ch *= 2
        layers.append(nn.Conv2d(ch, 1, 4, 1, 0, bias=False))
        self.net = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x).view(-1)


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The paper's BCE loss for D: -log D(x) - log(1 - D(G(z)))."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: -log D(G(z))."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def networks(shape: NetworkShape, norm: Norm = Norm.BATCH) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator); DCGAN is unconditional, so the classes are unused."""
    return (Generator(shape.image_size, shape.channels, shape.z_dim, shape.width),
            Discriminator(shape.image_size, shape.channels, shape.width, norm=norm))


RECIPE = Recipe(d_loss=d_loss, g_loss=g_loss, shared_fake=True)
