"""`--recompute-activations`: BigGAN's blocks keep only their inputs in the forward pass and run
again in the backward pass, from the state they first ran from, so the trial trains exactly as
without it; only its memory and its time differ."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch
from trainer_helpers import small_biggan

from critbatch_trainer.loop import Trial


def _flat(state: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(state, dict):
        return {k: v for key, value in state.items() for k, v in _flat(value, f"{prefix}/{key}")
                .items()}
    if isinstance(state, list | tuple):
        return {k: v for i, value in enumerate(state) for k, v in _flat(value, f"{prefix}/{i}")
                .items()}
    return {prefix: state}


def _train(trial: Trial, steps: int = 3) -> dict[str, Any]:
    batches = trial.data.batches(trial.cfg.seed, trial.cfg.batch_size, 0, trial.device)
    for step in range(steps):
        trial.gan.train_step(batches, step)
    return _flat(trial.gan.state_dict())


@pytest.mark.parametrize("extra", [[], ["--micro-batch", "4"]], ids=["whole", "micro-batches"])
def test_recomputed_blocks_train_the_same_gan(extra, stats_cache) -> None:
    """Three steps with and without recomputation leave every weight, spectral-norm vector,
    running statistic, EMA weight, optimizer moment, loss and random state the same, bit for
    bit: the rerun starts from the first run's state and leaves the state the first run left."""
    plain = _train(small_biggan(stats_cache, *extra))
    lean = _train(small_biggan(stats_cache, *extra, "--recompute-activations"))
    assert plain.keys() == lean.keys()
    assert any("_u" in k for k in plain) and any("running_mean" in k for k in plain)
    for key, value in plain.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, lean[key]), key
        else:
            assert value == lean[key], key
    assert plain["/losses/grad_generator"] > 0


def test_each_block_runs_again_in_the_backward_pass(stats_cache) -> None:
    """Where the step differentiates through a network, each of its blocks and attention layers
    starts twice (forward, then rebuilt for the backward pass, which stops once it has what the
    backward needs); G's samples for D's update are drawn without gradients and run once."""
    counts: dict[bool, Counter[str]] = {False: Counter(), True: Counter()}
    for recompute, calls in counts.items():
        trial = small_biggan(stats_cache, "--recompute-activations", str(recompute))
        for net in ("G", "D"):
            for name, module in getattr(trial.gan, net).named_modules():
                if name.count(".") == 1 and name.split(".")[0] in ("blocks", "attn"):
                    module.register_forward_pre_hook(
                        lambda *_a, key=f"{net}.{name}", calls=calls: calls.update([key]))
        _train(trial, steps=1)
    assert any(k.startswith("G.attn") for k in counts[False])
    # plain: G once for D's fakes and once for its own update; D once per update
    assert set(counts[False].values()) == {2}
    assert counts[True] == {k: 3 if k.startswith("G.") else 4 for k in counts[False]}


def test_the_noise_scale_measurement_is_the_same(stats_cache) -> None:
    norms = [small_biggan(stats_cache, *extra).gan.noise_scale_norms(5)
             for extra in ([], ["--recompute-activations"])]
    assert norms[0][0] > 0 and norms[1] == norms[0]
