"""The TTUR optimizers: one per network, each with its own constant learning rate."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def make_optimizer(name: str, params: Iterable[torch.nn.Parameter], *, lr: float, beta1: float,
                   beta2: float, eps: float, device: torch.device | None = None,
                   capturable: bool = False) -> torch.optim.Optimizer:
    """Adam, AdaBelief (timm's, rectified, no weight decay) or RMSProp.

    For RMSProp, beta2 is the smoothing constant (alpha) and beta1 the momentum (0 in the
    paper). On CUDA, Adam runs fused (one kernel for all parameters) and RMSProp multi-tensor;
    timm's AdaBelief has no fused form. `capturable` keeps the step count on the device, as
    CUDA-graph capture needs (Adam and RMSProp only).
    """
    cuda = device is not None and device.type == "cuda"
    if name == "adam":
        if cuda:
            return torch.optim.Adam(params, lr=lr, betas=(beta1, beta2), eps=eps, fused=True,
                                    capturable=capturable)
        return torch.optim.Adam(params, lr=lr, betas=(beta1, beta2), eps=eps)
    if name == "adabelief":
        from timm.optim import AdaBelief  # timm takes seconds to import: only when used

        return AdaBelief(params, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=0.0,
                         decoupled_decay=True, rectify=True)
    if name == "rmsprop":
        if cuda:
            return torch.optim.RMSprop(params, lr=lr, alpha=beta2, eps=eps, momentum=beta1,
                                       foreach=True, capturable=capturable)
        return torch.optim.RMSprop(params, lr=lr, alpha=beta2, eps=eps, momentum=beta1)
    raise ValueError(f"optimizer: unknown {name!r}")
