"""`--fused-attention`: BigGAN's self-attention by PyTorch's fused scaled-dot-product kernels
computes the same function as the plain softmax(θᵀφ) without keeping its score matrix for the
backward pass; only the rounding differs, so it is part of a checkpoint's identity."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from trainer_helpers import small_biggan

from critbatch_trainer.models.biggan import Attention
from critbatch_trainer.settings import ConfigError


def _pair(ch: int) -> tuple[Attention, Attention]:
    torch.manual_seed(ch)
    plain = Attention(ch)
    with torch.no_grad():
        plain.gamma.fill_(0.7)  # 0 at init, which would hide the attention's output
    fused = Attention(ch)
    fused.load_state_dict(plain.state_dict())
    fused.fused = True
    return plain, fused


def _run(attn: Attention, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    out = attn(x)
    out.square().mean().backward()
    return out.detach(), [x.grad, *(p.grad for p in attn.parameters())]


@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 3), ch=st.sampled_from([1, 4, 8, 24, 64]), side=st.sampled_from([2, 4, 8]),
       seed=st.integers(0, 2**16))
def test_the_fused_kernels_compute_the_same_attention(n, ch, side, seed) -> None:
    plain, fused = _pair(ch)
    x = torch.randn(n, ch, side, side, generator=torch.Generator().manual_seed(seed))
    (out_p, grads_p), (out_f, grads_f) = _run(plain, x), _run(fused, x)
    torch.testing.assert_close(out_f, out_p, rtol=1e-4, atol=1e-5)
    for gp, gf in zip(grads_p, grads_f, strict=True):
        torch.testing.assert_close(gf, gp, rtol=1e-3, atol=1e-5)


def _saved_numels(attn: Attention, x: torch.Tensor) -> list[int]:
    """The sizes of the tensors the forward pass keeps for the backward pass."""
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel())
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        attn(x.requires_grad_(True)).sum().backward()
    return sizes


def test_the_fused_attention_keeps_no_score_matrix() -> None:
    n, ch, side = 2, 64, 32
    plain, fused = _pair(ch)
    x = torch.randn(n, ch, side, side)
    scores = n * (side * side) * (side * side // 4)  # each query against the pooled keys
    assert max(_saved_numels(plain, x)) >= scores
    kept = _saved_numels(fused, x)
    assert max(kept) == x.numel()  # nothing larger than the layer's input
    assert sum(kept) < sum(_saved_numels(plain, x)) // 2


def test_a_trial_with_fused_attention_trains_as_one_without(stats_cache) -> None:
    """A step's losses and gradient norms agree to rounding, and every attention layer of G,
    D and G's EMA is fused."""
    losses = []
    for extra in ([], ["--fused-attention"]):
        trial = small_biggan(stats_cache, *extra)
        gan = trial.gan
        layers = [m for net in (gan.G, gan.D, gan.G_ema) for m in net.modules()
                  if isinstance(m, Attention)]
        assert len(layers) == 3 and {m.fused for m in layers} == {bool(extra)}
        batches = trial.data.batches(trial.cfg.seed, trial.cfg.batch_size, 0, trial.device)
        gan.train_step(batches, 0)
        losses.append({k: float(v) for k, v in gan.losses.items()})
    assert losses[0]["grad_generator"] > 0
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_fused_attention_is_part_of_a_checkpoints_identity(stats_cache) -> None:
    plain, fused = small_biggan(stats_cache), small_biggan(stats_cache, "--fused-attention")
    state = plain.state_dict()
    with pytest.raises(ConfigError, match="holds a run with fused-attention = False, this run "
                                          "has True"):
        fused.load_state_dict(state)
    del state["identity"]["fused_attention"]  # written before the flag existed: plain
    with pytest.raises(ConfigError, match="fused-attention = False"):
        fused.load_state_dict(state)
    plain.load_state_dict(state)
