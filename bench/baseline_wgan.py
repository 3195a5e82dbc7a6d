"""The WGAN-GP baseline: a step written the way the common PyTorch port of the authors' code
does it (its `gan_64x64.py` loop and `calc_gradient_penalty`).

Eager fp32, a CPU DataLoader feeding the device, noise and interpolation weights drawn on the
CPU and moved over, D's parameters toggled with `requires_grad` around the G update, three
backward passes per critic update (`backward(mone)` on the real scores, `backward(one)` on the
fake, then the penalty's), the penalty through `autograd.grad(..., create_graph=True,
retain_graph=True, only_inputs=True)`, and `.item()` on the costs every step (the port logs
them), which synchronises the host with the device.

The networks are the trainer's own (`critbatch_trainer.models.build`, DCGAN's with the
layer-norm critic), so both sides train the same architecture and the ratio measures the
step. lambda enters once, as in the trainer (the port applies it twice; the work is the same).
"""

from __future__ import annotations

import torch
from torch import autograd, nn
from torch.utils.data import DataLoader, TensorDataset

from critbatch_trainer.models import build


def calc_gradient_penalty(netD: nn.Module, real_data: torch.Tensor, fake_data: torch.Tensor,
                          lam: float, device: torch.device) -> torch.Tensor:
    """lam * E[(|grad D(interpolates)|_2 - 1)^2], the port's function."""
    b = real_data.size(0)
    alpha = torch.rand(b, 1)
    alpha = alpha.expand(b, real_data.nelement() // b).contiguous().view(real_data.size())
    alpha = alpha.to(device)
    interpolates = alpha * real_data + (1 - alpha) * fake_data
    interpolates = interpolates.detach().requires_grad_(True)
    disc_interpolates = netD(interpolates)
    gradients = autograd.grad(outputs=disc_interpolates, inputs=interpolates,
                              grad_outputs=torch.ones(disc_interpolates.size(), device=device),
                              create_graph=True, retain_graph=True, only_inputs=True)[0]
    gradients = gradients.view(gradients.size(0), -1)
    return ((gradients.norm(2, dim=1) - 1) ** 2).mean() * lam


class WganGpBaseline:
    """The port's training loop, one generator iteration (after `critic_iters` critic
    updates) per call."""

    def __init__(self, images: torch.Tensor, batch_size: int, device: torch.device,
                 workers: int = 0, *, width: int = 64, z_dim: int = 100, lr_g: float = 1e-4,
                 lr_d: float = 3e-4, critic_iters: int = 1, lam: float = 10.0) -> None:
        self.device, self.b, self.z_dim = device, batch_size, z_dim
        self.critic_iters, self.lam = critic_iters, lam
        nets = build("wgan-gp", image_size=images.shape[-1], channels=images.shape[1],
                     width=width, z_dim=z_dim)
        self.netG, self.netD = nets.generator.to(device), nets.discriminator.to(device)
        self.optimizerD = torch.optim.Adam(self.netD.parameters(), lr=lr_d, betas=(0.5, 0.999))
        self.optimizerG = torch.optim.Adam(self.netG.parameters(), lr=lr_g, betas=(0.5, 0.999))
        self.one = torch.tensor(1.0, device=device)
        self.mone = self.one * -1
        self.loader = DataLoader(TensorDataset(images), batch_size=batch_size, shuffle=True,
                                 drop_last=True, num_workers=workers,
                                 persistent_workers=workers > 0)
        self.it = iter(self.loader)
        self.log: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def _next(self) -> torch.Tensor:
        try:
            (real,) = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            (real,) = next(self.it)
        return real.to(self.device)

    def step(self) -> None:
        for p in self.netD.parameters():
            p.requires_grad = True
        for _ in range(self.critic_iters):
            real_data = self._next()
            self.netD.zero_grad()
            D_real = self.netD(real_data).mean()
            D_real.backward(self.mone)
            noise = torch.randn(self.b, self.z_dim).to(self.device)
            with torch.no_grad():  # the port's volatile Variable: G is frozen here
                fake = self.netG(noise)
            D_fake = self.netD(fake).mean()
            D_fake.backward(self.one)
            gradient_penalty = calc_gradient_penalty(self.netD, real_data, fake, self.lam,
                                                     self.device)
            gradient_penalty.backward()
            D_cost = D_fake - D_real + gradient_penalty
            Wasserstein_D = D_real - D_fake
            self.optimizerD.step()
        for p in self.netD.parameters():
            p.requires_grad = False
        self.netG.zero_grad()
        noise = torch.randn(self.b, self.z_dim).to(self.device)
        G = self.netD(self.netG(noise)).mean()
        G.backward(self.mone)
        G_cost = -G
        self.optimizerG.step()
        self.log = (D_cost.item(), G_cost.item(), Wasserstein_D.item())  # per-step host sync
