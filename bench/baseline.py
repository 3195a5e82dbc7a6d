"""The baseline: a DCGAN step and an FID evaluation written the way the paper's code does them.

Eager fp32 (cuDNN's defaults), a CPU DataLoader feeding the device, a sigmoid at the end of
the discriminator with BCELoss, and `.item()` on the losses every step (the paper's loop
logs them), which synchronises the host with the device. The FID writes every generated
image as a PNG file, reads the files back, extracts features in batches of 50 and takes
the matrix square root with scipy, as the common FID script does.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

NZ, NGF, NDF = 100, 64, 64


def _init(m: nn.Module) -> None:
    name = type(m).__name__
    if "Conv" in name:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif "BatchNorm" in name:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def generator(nc: int = 3) -> nn.Module:
    """The reference DCGAN generator for 64x64 images."""
    g = nn.Sequential(
        nn.ConvTranspose2d(NZ, NGF * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(NGF * 8),
        nn.ReLU(True),
        nn.ConvTranspose2d(NGF * 8, NGF * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(NGF * 4),
        nn.ReLU(True),
        nn.ConvTranspose2d(NGF * 4, NGF * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(NGF * 2),
        nn.ReLU(True),
        nn.ConvTranspose2d(NGF * 2, NGF, 4, 2, 1, bias=False), nn.BatchNorm2d(NGF), nn.ReLU(True),
        nn.ConvTranspose2d(NGF, nc, 4, 2, 1, bias=False), nn.Tanh(),
    )
    g.apply(_init)
    return g


def discriminator(nc: int = 3) -> nn.Module:
    """The reference DCGAN discriminator for 64x64 images, ending in a sigmoid."""
    d = nn.Sequential(
        nn.Conv2d(nc, NDF, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(NDF, NDF * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(NDF * 2),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(NDF * 2, NDF * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(NDF * 4),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(NDF * 4, NDF * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(NDF * 8),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(NDF * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid(),
    )
    d.apply(_init)
    return d


class BaselineTrainer:
    """The paper's training loop, one step per call."""

    def __init__(self, images: torch.Tensor, batch_size: int, device: torch.device,
                 workers: int = 0, lr_g: float = 1e-4, lr_d: float = 3e-4) -> None:
        self.device, self.b = device, batch_size
        self.G, self.D = generator(images.shape[1]).to(device), discriminator(
            images.shape[1]).to(device)
        self.criterion = nn.BCELoss()
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=lr_d, betas=(0.5, 0.999))
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=lr_g, betas=(0.5, 0.999))
        self.loader = DataLoader(TensorDataset(images), batch_size=batch_size, shuffle=True,
                                 drop_last=True, num_workers=workers,
                                 persistent_workers=workers > 0)
        self.it = iter(self.loader)
        self.log: tuple[float, float] = (0.0, 0.0)

    def step(self) -> None:
        try:
            (real,) = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            (real,) = next(self.it)
        real = real.to(self.device)
        b = real.size(0)
        label = torch.full((b,), 1.0, device=self.device)
        self.D.zero_grad()
        err_real = self.criterion(self.D(real).view(-1), label)
        err_real.backward()
        noise = torch.randn(b, NZ, 1, 1, device=self.device)
        fake = self.G(noise)
        label.fill_(0.0)
        err_fake = self.criterion(self.D(fake.detach()).view(-1), label)
        err_fake.backward()
        self.opt_d.step()
        self.G.zero_grad()
        label.fill_(1.0)
        err_g = self.criterion(self.D(fake).view(-1), label)
        err_g.backward()
        self.opt_g.step()
        self.log = ((err_real + err_fake).item(), err_g.item())  # per-step host sync


def fid_with_files(G: nn.Module, extractor: nn.Module, z: torch.Tensor, device: torch.device,
                   directory: Path, reference: tuple[np.ndarray, np.ndarray],
                   gen_batch: int = 100, feat_batch: int = 50) -> dict[str, float]:
    """The file-based FID of G(z) against `reference` (mean, covariance), timed by phase.

    Returns seconds per phase (write, read_extract, stats, distance) and the FID.
    """
    from PIL import Image
    from scipy import linalg
    from torchvision.utils import save_image

    t0 = time.perf_counter()
    n = len(z)
    with torch.no_grad():
        k = 0
        for i in range(0, n, gen_batch):
            imgs = G(z[i:i + gen_batch].to(device).view(-1, z.shape[1], 1, 1))
            for img in imgs:
                save_image(img, directory / f"{k}.png", normalize=True, value_range=(-1, 1))
                k += 1
    t1 = time.perf_counter()
    feats = []
    files = sorted(directory.glob("*.png"))
    with torch.no_grad():
        for i in range(0, len(files), feat_batch):
            batch = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.float32)
                              for f in files[i:i + feat_batch]])
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(device) / 127.5 - 1.0
            feats.append(extractor(x).cpu().numpy())
    t2 = time.perf_counter()
    f = np.concatenate(feats).astype(np.float64)
    mu, sigma = f.mean(axis=0), np.cov(f, rowvar=False)
    t3 = time.perf_counter()
    mu2, sigma2 = reference
    covmean = np.real(linalg.sqrtm(sigma.dot(sigma2)))
    diff = mu - mu2
    value = float(diff.dot(diff) + np.trace(sigma) + np.trace(sigma2) - 2 * np.trace(covmean))
    t4 = time.perf_counter()
    return {"write": t1 - t0, "read_extract": t2 - t1, "stats": t3 - t2, "distance": t4 - t3,
            "fid": value}
