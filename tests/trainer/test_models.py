"""Shapes of the three GANs, the paper's DCGAN size, and the loss definitions."""

from __future__ import annotations

import pytest
import torch
from timm.optim import AdaBelief

from critbatch import vocabulary
from critbatch_trainer.models import biggan, build, count_params, wgan
from critbatch_trainer.optim import make_optimizer


@pytest.mark.parametrize("model,size,channels", [
    ("dcgan", 64, 3), ("dcgan", 32, 1), ("dcgan", 16, 1), ("wgan-gp", 64, 3),
    ("biggan", 32, 3), ("biggan", 64, 3), ("biggan", 128, 3),
])
def test_generator_and_discriminator_shapes_at_tiny_width(model, size, channels) -> None:
    torch.manual_seed(0)
    z_dim = 120 if model == "biggan" else 16
    attention = {128: 64, 64: 32}.get(size, 0) if model == "biggan" else 0
    nets = build(model, image_size=size, channels=channels, width=4, z_dim=z_dim,
                 num_classes=3, attention_res=attention)
    z = torch.randn(3, z_dim)
    y = torch.tensor([0, 1, 2])
    x = nets.generator(z, y)
    assert x.shape == (3, channels, size, size)
    assert x.abs().max() <= 1.0
    assert nets.discriminator(x, y).shape == (3,)
    assert nets.recipe.conditional == (model == "biggan")


def test_paper_dcgan_generator_size_is_derived_from_its_layers() -> None:
    # PyTorch's DCGAN at 64x64: z=100 -> 512 -> 256 -> 128 -> 64 -> 3 channels, 4x4 transposed
    # convolutions without bias, batch norm (gain + bias) after all but the last.
    convs = [(100, 512), (512, 256), (256, 128), (128, 64), (64, 3)]
    by_hand = sum(cin * cout * 4 * 4 for cin, cout in convs) + sum(2 * c for c in
                                                                   (512, 256, 128, 64))
    assert by_hand == 3_576_704
    nets = build("dcgan", image_size=64, channels=3, width=64, z_dim=100)
    assert count_params(nets.generator) == by_hand


def test_biggan_uses_spectral_norm_shared_embedding_and_hierarchical_z() -> None:
    torch.manual_seed(0)
    g = biggan.Generator(32, 3, z_dim=120, width=4, num_classes=5, attention_res=0)
    assert g.chunk == 30  # 3 blocks + the first linear layer
    names = [n for n, _ in g.named_parameters()]
    assert any("parametrizations.weight.original" in n for n in names)
    assert g.shared.weight.shape == (5, 128)
    z = torch.randn(2, 120)
    g.eval()
    same = g(z, torch.tensor([1, 1]))
    other = g(z, torch.tensor([1, 2]))
    assert torch.allclose(same[0], other[0], atol=1e-6)
    assert not torch.allclose(same[1], other[1], atol=1e-4)


def test_paper_biggan_128_generator_has_the_published_size() -> None:
    # BigGAN-PyTorch's ImageNet-128 run (ch 96, z 120, shared 128, attention at 64): ~70.4M.
    with torch.device("meta"):
        nets = build("biggan", image_size=128, channels=3, width=96, z_dim=120,
                     num_classes=1000, attention_res=64)
    assert 70.3e6 < count_params(nets.generator) < 70.5e6


def test_gradient_penalty_weight_is_applied_once() -> None:
    # For a linear critic D(x) = <w, x>, |grad D| = |w| everywhere: GP = lambda (|w| - 1)^2.
    w = torch.full((1, 2, 2), 0.75)

    def critic(x, y=None):
        return (x * w).flatten(1).sum(1)

    real, fake = torch.randn(5, 1, 2, 2), torch.randn(5, 1, 2, 2)
    gp = wgan.gradient_penalty(critic, real, fake, 10.0, torch.rand(5, 1, 1, 1))
    assert gp.item() == pytest.approx(10.0 * (w.norm().item() - 1.0) ** 2, rel=1e-5)


def test_losses_have_their_textbook_values() -> None:
    from critbatch_trainer.models import dcgan

    zero = torch.zeros(4)
    assert dcgan.d_loss(zero, zero).item() == pytest.approx(2 * torch.log(torch.tensor(2.0)))
    assert biggan.d_loss(torch.ones(3), -torch.ones(3)).item() == 0.0
    assert biggan.d_loss(zero, zero).item() == 2.0
    assert wgan.critic_loss(torch.tensor([2.0]), torch.tensor([0.5])).item() == -1.5


def test_optimizers_use_the_named_implementations_and_settings() -> None:
    p = [torch.nn.Parameter(torch.zeros(3))]
    adam = make_optimizer("adam", p, lr=1e-4, beta1=0.5, beta2=0.999, eps=1e-8)
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["betas"] == (0.5, 0.999)
    ab = make_optimizer("adabelief", p, lr=3e-4, beta1=0.5, beta2=0.999, eps=1e-16)
    assert isinstance(ab, AdaBelief)
    assert ab.defaults["eps"] == 1e-16 and ab.defaults["rectify"] and ab.defaults[
        "weight_decay"] == 0
    rms = make_optimizer("rmsprop", p, lr=1e-4, beta1=0.0, beta2=0.99, eps=1e-8)
    assert isinstance(rms, torch.optim.RMSprop) and rms.defaults["alpha"] == 0.99


@pytest.mark.parametrize("model", vocabulary.MODELS)
def test_each_models_recipe_agrees_with_the_vocabulary(model) -> None:
    """The spec expects an EMA by the vocabulary; the training step follows the model's
    recipe: the two must say the same."""
    with torch.device("meta"):
        recipe = build(model, image_size=32, channels=1, width=4, z_dim=16).recipe
    assert recipe.ema == (model in vocabulary.EMA_MODELS)
    assert (vocabulary.micro_batch_problem(model) is None) == (not recipe.shared_fake)
    assert (recipe.penalty is not None) == (model == "wgan-gp")
