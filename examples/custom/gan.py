"""A DCGAN on the 8x8 digits at 16x16, in the plain style of PyTorch's DCGAN example, made a
critbatch trainer with `critbatch.reporter` (the lines marked `# critbatch`).

    critbatch run gan.yaml                  # a sweep over batch sizes
    CRITBATCH_BATCH_SIZE=16 CRITBATCH_SEED=0 CRITBATCH_TARGET_METRIC=fid \
    CRITBATCH_TARGET_THRESHOLD=300 CRITBATCH_TARGET_GOAL=minimize CRITBATCH_MAX_STEPS=600 \
    python gan.py                           # one trial by hand

The FID uses the small digits classifier shipped with critbatch's trainer: "your evaluation
here". Needs torch and the trainer's extras (`pip install 'critbatch[trainer]'`).
"""

import os

import torch
import torch.nn as nn
import torch.optim as optim

from critbatch.reporter import TrialReporter, optimizer_settings  # critbatch
from critbatch_trainer.embedded import load_digits_images
from critbatch_trainer.extractors import load_extractor
from critbatch_trainer.fid import FrechetReference, gaussian_stats

nz = 32  # size of the latent vector
ngf = 16  # generator width
ndf = 16  # discriminator width
nc = 1  # channels
lr = 1e-3
beta1 = 0.5
eval_samples = 500


def weights_init(m):
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        torch.nn.init.normal_(m.weight, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        torch.nn.init.normal_(m.weight, 1.0, 0.02)
        torch.nn.init.zeros_(m.bias)


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(
            # input is Z, going into a convolution
            nn.ConvTranspose2d(nz, ngf * 2, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            # state size. (ngf*2) x 4 x 4
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            # state size. (ngf) x 8 x 8
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
            nn.Tanh(),
            # state size. (nc) x 16 x 16
        )

    def forward(self, input):
        return self.main(input)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(
            # input is (nc) x 16 x 16
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            # state size. (ndf) x 8 x 8
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, inplace=True),
            # state size. (ndf*2) x 4 x 4
            nn.Conv2d(ndf * 2, 1, 4, 1, 0, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, input):
        return self.main(input).view(-1)


# Your evaluation here: FID of generated digits against the real ones, in the feature space of
# a small digits classifier.
extractor = load_extractor("digits", "digits")
dataset = load_digits_images(16).images  # (1797, 1, 16, 16) in [-1, 1]
with torch.no_grad():
    real = FrechetReference(*gaussian_stats(extractor(dataset).numpy()))


@torch.no_grad()
def fid(netG, noise):
    return real.distance(*gaussian_stats(extractor(netG(noise)).numpy()))


def main():
    checkpoint = None

    def save(step):  # critbatch: called on SIGTERM, between two steps
        if checkpoint:
            state = {"netG": netG.state_dict(), "netD": netD.state_dict(),
                     "optG": optimizerG.state_dict(), "optD": optimizerD.state_dict(),
                     "rng": rng.get_state(), "torch_rng": torch.get_rng_state(),
                     "reporter": reporter.state()}
            torch.save(state, checkpoint + ".tmp")
            os.replace(checkpoint + ".tmp", checkpoint)

    reporter = TrialReporter.from_env(on_sigterm=save)  # critbatch
    batch_size = reporter.batch_size
    eval_every = reporter.eval_every(20)
    torch.manual_seed(reporter.seed)
    rng = torch.Generator().manual_seed(reporter.seed)
    fixed_noise = torch.randn(eval_samples, nz, 1, 1,
                              generator=torch.Generator().manual_seed(10_000 + reporter.seed))

    netG = Generator()
    netG.apply(weights_init)
    netD = Discriminator()
    netD.apply(weights_init)
    criterion = nn.BCELoss()
    real_label, fake_label = 1.0, 0.0
    optimizerD = optim.Adam(netD.parameters(), lr=lr, betas=(beta1, 0.999))
    optimizerG = optim.Adam(netG.parameters(), lr=lr, betas=(beta1, 0.999))

    step = 0
    if reporter.checkpoint_dir:
        checkpoint = os.path.join(reporter.checkpoint_dir, "checkpoint.pt")
        if os.path.exists(checkpoint):
            state = torch.load(checkpoint, weights_only=True)
            netG.load_state_dict(state["netG"])
            netD.load_state_dict(state["netD"])
            optimizerG.load_state_dict(state["optG"])
            optimizerD.load_state_dict(state["optD"])
            rng.set_state(state["rng"])
            torch.set_rng_state(state["torch_rng"])
            step = reporter.resume(state["reporter"])  # critbatch

    while not reporter.done:  # critbatch: until the target is met or maxSteps are done
        real_cpu = dataset[torch.randint(len(dataset), (batch_size,), generator=rng)]

        # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
        netD.zero_grad()
        label = torch.full((batch_size,), real_label)
        errD_real = criterion(netD(real_cpu), label)
        errD_real.backward()
        noise = torch.randn(batch_size, nz, 1, 1)
        fake = netG(noise)
        label.fill_(fake_label)
        errD_fake = criterion(netD(fake.detach()), label)
        errD_fake.backward()
        optimizerD.step()

        # (2) Update G network: maximize log(D(G(z)))
        netG.zero_grad()
        label.fill_(real_label)
        errG = criterion(netD(fake), label)
        errG.backward()
        optimizerG.step()

        step += 1
        reporter.step(step, generator=errG, discriminator=errD_real + errD_fake)  # critbatch
        if step % eval_every == 0 or reporter.done:
            reporter.evaluate(step, fid(netG, fixed_noise))  # critbatch

    reporter.finish(  # critbatch: the result JSON
        params=sum(p.numel() for p in netG.parameters()), dataset_size=len(dataset),
        optimizer=optimizer_settings(optimizerG))


if __name__ == "__main__":
    main()
