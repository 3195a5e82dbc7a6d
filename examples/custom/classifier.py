"""A small MLP classifier of the 8x8 digits, trained with Adam at batch size b until its
validation accuracy reaches the target: a non-GAN workload made a critbatch trainer with
`critbatch.reporter` (the lines marked `# critbatch`).

    critbatch run classifier.yaml           # a sweep over batch sizes
    CRITBATCH_BATCH_SIZE=32 CRITBATCH_SEED=0 CRITBATCH_TARGET_METRIC=accuracy \
    CRITBATCH_TARGET_THRESHOLD=0.95 CRITBATCH_TARGET_GOAL=maximize CRITBATCH_MAX_STEPS=1500 \
    python classifier.py                    # one trial by hand

It reports its parameter count, training-set size and optimizer settings, so the sweep's
report can set N(b) against Proposition 3.4's estimate. Needs torch and critbatch's trainer
(its embedded digits).
"""

import os

import torch
from torch import nn
from torch.nn import functional as F

from critbatch.reporter import TrialReporter, optimizer_settings  # critbatch
from critbatch_trainer.embedded import load_digits_images

hidden = 64
lr = 3e-2  # large: below b = 4 the gradient noise keeps the accuracy under 0.95
betas = (0.9, 0.999)

# 1,797 digits: every fifth one is held out for validation, the same split for every trial.
digits = load_digits_images(8)
x, y = digits.images.flatten(1), digits.labels
held_out = torch.arange(len(y)) % 5 == 0
x_train, y_train = x[~held_out], y[~held_out]
x_val, y_val = x[held_out], y[held_out]


def make_model():
    return nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, 10))


@torch.no_grad()
def accuracy(model):
    return (model(x_val).argmax(1) == y_val).float().mean().item()


def main():
    checkpoint = None

    def save(step):  # critbatch: called on SIGTERM, between two steps
        if checkpoint:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "rng": rng.get_state(), "reporter": reporter.state()}
            torch.save(state, checkpoint + ".tmp")
            os.replace(checkpoint + ".tmp", checkpoint)

    reporter = TrialReporter.from_env(on_sigterm=save)  # critbatch
    torch.manual_seed(reporter.seed)
    rng = torch.Generator().manual_seed(reporter.seed)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=betas)
    eval_every = reporter.eval_every(5)

    step = 0
    if reporter.checkpoint_dir:
        checkpoint = os.path.join(reporter.checkpoint_dir, "checkpoint.pt")
        if os.path.exists(checkpoint):
            state = torch.load(checkpoint, weights_only=True)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            rng.set_state(state["rng"])
            step = reporter.resume(state["reporter"])  # critbatch

    while not reporter.done:  # critbatch: until the target is met or maxSteps are done
        batch = torch.randint(len(y_train), (reporter.batch_size,), generator=rng)
        loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        reporter.step(step, train=loss)  # critbatch
        if step % eval_every == 0 or reporter.done:
            reporter.evaluate(step, accuracy(model))  # critbatch

    reporter.finish(  # critbatch: the result JSON
        params=sum(p.numel() for p in model.parameters()), dataset_size=len(y_train),
        optimizer=optimizer_settings(optimizer))


if __name__ == "__main__":
    main()
