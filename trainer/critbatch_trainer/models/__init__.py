"""The three GANs behind one constructor, so the training loop needs no per-model branches."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from critbatch_trainer.models import biggan, dcgan


@dataclass
class GanModels:
    generator: nn.Module
    discriminator: nn.Module
    conditional: bool


def build(model: str, image_size: int, channels: int, width: int, z_dim: int,
          num_classes: int = 1, attention_res: int = 0) -> GanModels:
    """Generator and discriminator for `model` ("dcgan", "wgan-gp" or "biggan")."""
    if model == "biggan":
        return GanModels(
            biggan.Generator(image_size, channels, z_dim, width, num_classes,
                             attention_res=attention_res),
            biggan.Discriminator(image_size, channels, width, num_classes,
                                 attention_res=attention_res),
            conditional=True,
        )
    norm = "layer" if model == "wgan-gp" else "batch"
    return GanModels(
        dcgan.Generator(image_size, channels, z_dim, width),
        dcgan.Discriminator(image_size, channels, width, norm=norm),
        conditional=False,
    )


def count_params(module: nn.Module) -> int:
    """Theta: every trainable parameter (normalisation layers and embeddings included)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

