"""Activation recomputation (`--recompute-activations`): a segment of a network keeps only its
inputs in the forward pass and runs again in the backward pass to rebuild its activations, so
a step holds one segment's activations at a time, for about one more forward pass of compute.

The rerun starts from the state the first run started from: the segment's buffers (spectral
norm's power-iteration vectors, batch norm's running statistics) are set back for it and
restored after it. A second power iteration would change the normalised weights, and a second
running-statistics update the model, so without this the recomputed step would train a
different GAN; with it, it trains the same one (tests/trainer/test_recompute.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def recomputed(fn: Callable[..., torch.Tensor], modules: Sequence[nn.Module],
               *args: torch.Tensor) -> torch.Tensor:
    """fn(*args), its activations recomputed in the backward pass; `modules`: those fn runs,
    whose buffers it may update. Without autograd (sampling, no_grad) it simply runs."""
    if not torch.is_grad_enabled():
        return fn(*args)
    buffers = [b for m in modules for b in m.buffers()]
    before = [b.clone() for b in buffers]

    @contextlib.contextmanager
    def rerun() -> Iterator[None]:
        after = [b.clone() for b in buffers]
        for b, v in zip(buffers, before, strict=True):
            b.copy_(v)
        try:
            yield
        finally:
            for b, v in zip(buffers, after, strict=True):
                b.copy_(v)

    # No random numbers are drawn inside a segment, so no generator state is saved for it.
    return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False,
                      context_fn=lambda: (contextlib.nullcontext(), rerun()))
