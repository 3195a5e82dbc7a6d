"""What each model module declares: the shape of its two networks and its training recipe."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# (critic, real, fake, lambda, eps, labels) -> the penalty term of the critic's loss; eps: one
# uniform interpolation weight per sample, drawn by the step before its arithmetic
Penalty = Callable[[nn.Module, torch.Tensor, torch.Tensor, float, torch.Tensor,
                    torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class NetworkShape:
    """The sizes a generator and a discriminator are built for."""

    image_size: int
    channels: int
    width: int  # DCGAN's ngf = ndf, BigGAN's channel multiplier
    z_dim: int
    num_classes: int = 1
    attention_res: int = 0  # BigGAN's self-attention resolution, 0 = none


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """How one model trains, so the training loop never names a model.

    `shared_fake`: the paper's DCGAN step, one data batch per step and one fake batch that
    both updates use (`--n-critic` does not apply). Otherwise `--n-critic` discriminator
    updates, each on a fresh batch and fresh noise, then a generator update on fresh noise.
    """

    d_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (real, fake scores)
    g_loss: Callable[[torch.Tensor], torch.Tensor]  # (fake scores)
    penalty: Penalty | None = None  # added to the discriminator's loss
    shared_fake: bool = False
    conditional: bool = False  # class labels go into both networks
    ema: bool = False  # FID is measured on an exponential moving average of the generator
    # D scores the real and the fake batch in one pass (BigGAN-PyTorch's G_D): one spectral
    # norm power iteration per update and fewer kernel launches. Only for a D without batch
    # statistics, which would mix the two batches.
    joint_d: bool = False
