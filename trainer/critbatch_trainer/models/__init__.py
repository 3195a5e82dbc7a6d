"""The three GANs behind one constructor: each model module declares its networks and its
training recipe, so the training step needs no per-model branches."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from critbatch_trainer.models import biggan, dcgan, wgan
from critbatch_trainer.models.recipe import NetworkShape, Recipe

__all__ = ["GanModels", "NetworkShape", "Recipe", "build", "count_params"]

_MODULES = {"dcgan": dcgan, "wgan-gp": wgan, "biggan": biggan}


@dataclass
class GanModels:
    generator: nn.Module
    discriminator: nn.Module
    recipe: Recipe


def build(model: str, *, image_size: int, channels: int, width: int, z_dim: int,
          num_classes: int = 1, attention_res: int = 0) -> GanModels:
    """Generator, discriminator and recipe of `model` ("dcgan", "wgan-gp" or "biggan")."""
    module = _MODULES[model]
    shape = NetworkShape(image_size=image_size, channels=channels, width=width, z_dim=z_dim,
                         num_classes=num_classes, attention_res=attention_res)
    generator, discriminator = module.networks(shape)
    return GanModels(generator, discriminator, module.RECIPE)


def count_params(module: nn.Module) -> int:
    """Theta: every trainable parameter (normalisation layers and embeddings included)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
