"""`--micro-batch`: a batch larger than the micro-batch trains in passes of at most that many
samples, its gradients accumulated with each pass weighted by its share of the batch, so one
step holds one micro-batch's activations at a time (how BigGAN-PyTorch reaches its batch
sizes). Batch norm and spectral norm then see each micro-batch alone; without them (in eval
mode) the step's gradients are the whole batch's."""

from __future__ import annotations

import itertools

import pytest
import torch

from critbatch_trainer.config import parse_args
from critbatch_trainer.loop import Trial
from critbatch_trainer.settings import ConfigError

MODELS = {
    "wgan-gp": ["--model", "wgan-gp"],
    "biggan": ["--model", "biggan", "--image-size", "32", "--width", "4"],
}


def _trial(stats_cache, model: str, *extra: str) -> Trial:
    cfg = parse_args(["--batch-size", "6", "--fid-threshold", "0.001", "--max-steps", "2",
                      "--eval-samples", "64", "--gns-every", "0", "--threads", "1",
                      "--stats-cache", str(stats_cache), "--termination-log", "",
                      *MODELS[model], *extra])
    return Trial.create(cfg, log=lambda _msg: None)


def _frozen(t: Trial) -> Trial:
    """Batch norm's running statistics and spectral norm's power iterations settled by forward
    passes, then held (eval mode): no layer looks across samples any more."""
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for x, y in itertools.islice(t.data.batches(1, 6, 0, t.device), 30):
            t.gan.D(x, y)
            t.gan.D(t.gan.G(torch.randn(6, t.cfg.z_dim, generator=noise), y), y)
    t.gan.G.eval()
    t.gan.D.eval()
    return t


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.linalg.vector_norm(a - b) <= 1e-4 * torch.linalg.vector_norm(a))


@pytest.mark.parametrize("model", MODELS)
def test_micro_batches_add_up_to_the_whole_batchs_gradients(model, stats_cache) -> None:
    """Micro-batches of 4 and 2 rows (b = 6) leave in G and D the gradients, and report the
    losses, of one pass over the whole batch, where no layer looks across samples."""
    whole = _frozen(_trial(stats_cache, model))
    micro = _frozen(_trial(stats_cache, model, "--micro-batch", "4"))
    for t in (whole, micro):
        t.gan.train_step(t.data.batches(0, 6, 0, t.device), 0)
    for net in ("G", "D"):
        for pw, pm in zip(getattr(whole.gan, net).parameters(),
                          getattr(micro.gan, net).parameters(), strict=True):
            assert _close(pw.grad, pm.grad), net
    lw, lm = whole.gan.loss_values(), micro.gan.loss_values()
    assert lw["grad_generator"] > 0 and lw["grad_discriminator"] > 0
    assert lm == pytest.approx(lw, rel=1e-4)


@pytest.mark.parametrize("model", MODELS)
def test_each_pass_holds_one_micro_batch(model, stats_cache) -> None:
    trial = _trial(stats_cache, model, "--micro-batch", "4")
    sizes: dict[str, list[int]] = {"G": [], "D": []}
    for net in sizes:
        getattr(trial.gan, net).register_forward_hook(
            lambda _m, args, _out, net=net: sizes[net].append(len(args[0])))
    trial.gan.train_step(trial.data.batches(0, 6, 0, trial.device), 0)
    assert sizes["G"] == [4, 2, 4, 2]  # the critic's fakes, then the generator's passes
    assert sizes["D"] == {
        "wgan-gp": [4, 4, 4, 2, 2, 2, 4, 2],  # real, fake, interpolates per pass; then G's
        "biggan": [8, 4, 4, 2],  # real and fake in one pass each; then G's
    }[model]


@pytest.mark.parametrize("model", MODELS)
def test_the_noise_scale_measurement_adds_up_its_micro_batches(model, stats_cache) -> None:
    whole = _trial(stats_cache, model, "--batch-size", "8")
    micro = _trial(stats_cache, model, "--batch-size", "8", "--micro-batch", "3")
    norms = [_frozen(t).gan.noise_scale_norms(5) for t in (whole, micro)]
    assert norms[0][0] > 0 and norms[1] == pytest.approx(norms[0], rel=1e-4)


def test_a_micro_batch_that_splits_the_batch_is_part_of_a_checkpoints_identity(
        stats_cache) -> None:
    plain = _trial(stats_cache, "wgan-gp")
    assert plain.identity()["micro_batch"] == 0
    # At or above the batch size nothing is split: the same step as without the flag.
    assert _trial(stats_cache, "wgan-gp", "--micro-batch", "6").identity() == plain.identity()
    split = _trial(stats_cache, "wgan-gp", "--micro-batch", "4")
    assert split.identity()["micro_batch"] == 4
    state = plain.state_dict()
    with pytest.raises(ConfigError, match="holds a run with micro-batch = 0, this run has 4"):
        split.load_state_dict(state)
    del state["identity"]["micro_batch"]  # written before micro-batches existed
    with pytest.raises(ConfigError, match="micro-batch = 0"):
        split.load_state_dict(state)
    plain.load_state_dict(state)

