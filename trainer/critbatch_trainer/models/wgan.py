"""WGAN-GP (Gulrajani et al. 2017) on DCGAN networks: a critic without sigmoid.

The penalty weight lambda enters the critic's loss once (the paper's public code applied it
twice, an effective 100 at lambda = 10).
"""

from __future__ import annotations

import torch
from torch import nn

from critbatch_trainer.models import dcgan
from critbatch_trainer.models.recipe import NetworkShape, Recipe


def critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """E[D(G(z))] - E[D(x)], the negative Wasserstein estimate (without the penalty)."""
    return fake_scores.mean() - real_scores.mean()


def generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    return -fake_scores.mean()


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, lam: float,
                     eps: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """lam * E[(|grad_x D(x_hat)|_2 - 1)^2] on the interpolates eps * real + (1 - eps) * fake,
    eps of shape (n, 1, 1, 1) in [0, 1)."""
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    scores = critic(x_hat, labels)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    norms = grad.flatten(1).norm(2, dim=1)
    return lam * ((norms - 1) ** 2).mean()


def networks(shape: NetworkShape) -> tuple[nn.Module, nn.Module]:
    """DCGAN's networks, the critic with layer norm instead of batch norm."""
    return dcgan.networks(shape, norm=dcgan.Norm.LAYER)


RECIPE = Recipe(d_loss=critic_loss, g_loss=generator_loss, penalty=gradient_penalty)
