"""The TTUR optimizers: one per network, each with its own constant learning rate."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def make_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float, beta1: float,
                   beta2: float, eps: float) -> torch.optim.Optimizer:
    """Adam, AdaBelief (timm's, rectified, no weight decay) or RMSProp.

    For RMSProp, beta2 is the smoothing constant (alpha) and beta1 the momentum (0 in the
    paper).
    """
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(beta1, beta2), eps=eps)
    if name == "adabelief":
        from timm.optim import AdaBelief  # timm takes seconds to import: only when used

        return AdaBelief(params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=0.0,
                         decoupled_decay=True, rectify=True)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=beta2, eps=eps, momentum=beta1)
    raise ValueError(f"optimizer: unknown {name!r}")
