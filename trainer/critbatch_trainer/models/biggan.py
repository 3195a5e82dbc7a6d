"""BigGAN (Brock et al. 2019), class-conditional, after the authors' BigGAN-PyTorch.

Spectral norm in G and D, conditional batch norm whose gains and biases come from a shared
class embedding concatenated with a chunk of z (hierarchical z), self-attention at one
resolution, a projection discriminator, hinge loss, orthogonal init. The generator's EMA is
kept by the training step (the recipe asks for it). `width` is the channel multiplier (the
paper's ImageNet-128 run: 96, z 120, shared embedding 128, attention at 64); the default 32
fits small GPUs.

Class embeddings are looked up with `index_select`: its backward never reads back to the host,
so the step can be captured as a CUDA graph at any batch size (`nn.Embedding`'s CUDA backward
sorts and synchronises above a few thousand labels); on the CPU both give the same numbers.

`recompute` (set by the training step for `--recompute-activations`): each block, with the
attention after it, keeps only its inputs and is recomputed in the backward pass.
`fuse_attention` (for `--fused-attention`) routes the self-attention through PyTorch's fused
scaled-dot-product kernels, which never hold the score matrix.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from critbatch_trainer.models.recipe import NetworkShape, Recipe
from critbatch_trainer.models.recompute import recomputed

# Channel multipliers per resolution (BigGAN-PyTorch's G_arch / D_arch).
G_ARCH = {
    32: ([4, 4, 4], [4, 4, 4]),
    64: ([16, 16, 8, 4], [16, 8, 4, 2]),
    128: ([16, 16, 8, 4, 2], [16, 8, 4, 2, 1]),
}
D_ARCH = {
    32: ([4, 4, 4], [4, 4, 4, 4], [True, True, False, False]),
    64: ([1, 2, 4, 8], [1, 2, 4, 8, 16], [True, True, True, True, False]),
    128: ([1, 2, 4, 8, 16], [1, 2, 4, 8, 16, 16], [True, True, True, True, True, False]),
}


def _sn_conv(cin: int, cout: int, k: int = 3) -> nn.Module:
    return spectral_norm(nn.Conv2d(cin, cout, k, padding=k // 2), eps=1e-6)


def _sn_linear(cin: int, cout: int, bias: bool = True) -> nn.Module:
    return spectral_norm(nn.Linear(cin, cout, bias=bias), eps=1e-6)


class ConditionalBatchNorm(nn.Module):
    """Batch norm whose gain (1 + g) and bias come from linear maps of the condition vector."""

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False, eps=1e-5)
        self.gain = _sn_linear(cond_dim, channels, bias=False)
        self.bias = _sn_linear(cond_dim, channels, bias=False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        g = 1 + self.gain(cond)[:, :, None, None]
        b = self.bias(cond)[:, :, None, None]
        return self.bn(x) * g + b


class Attention(nn.Module):
    """SAGAN self-attention with spectral norm; the residual gain starts at 0."""

    fused = False

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.theta = _sn_conv(ch, max(ch // 8, 1), 1)
        self.phi = _sn_conv(ch, max(ch // 8, 1), 1)
        self.g = _sn_conv(ch, max(ch // 2, 1), 1)
        self.o = _sn_conv(max(ch // 2, 1), ch, 1)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        theta = self.theta(x).flatten(2)
        phi = F.max_pool2d(self.phi(x), 2).flatten(2)
        g = F.max_pool2d(self.g(x), 2).flatten(2)
        if self.fused:
            o = _fused(theta, phi, g)
        else:
            beta = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)
            o = g @ beta.transpose(1, 2)
        return x + self.gamma * self.o(o.view(n, -1, h, w))


def _fused(theta: torch.Tensor, phi: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """g·softmax(θᵀφ)ᵀ by `scaled_dot_product_attention` (unscaled, as SAGAN): one head whose
    queries and keys are zero-padded to the values' size, since the fused kernels (flash,
    memory-efficient) want one head size and their inputs contiguous; zeros add nothing to
    θᵀφ. Where no fused kernel applies, PyTorch falls back to the plain computation."""
    pad = (0, g.shape[1] - theta.shape[1])
    q = F.pad(theta.transpose(1, 2), pad)[:, None].contiguous()
    k = F.pad(phi.transpose(1, 2), pad)[:, None].contiguous()
    v = g.transpose(1, 2)[:, None].contiguous()
    return F.scaled_dot_product_attention(q, k, v, scale=1.0)[:, 0].transpose(1, 2)


def fuse_attention(*nets: nn.Module) -> None:
    """Route these networks' self-attention through the fused kernels (`--fused-attention`)."""
    for net in nets:
        for m in net.modules():
            if isinstance(m, Attention):
                m.fused = True


def _stage(block: nn.Module, attn: nn.Module | None, recompute: bool, h: torch.Tensor,
           *cond: torch.Tensor) -> torch.Tensor:
    """A residual block and the attention after it (if any); with `recompute`, one segment
    recomputed in the backward pass."""
    def run(h: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        h = block(h, *cond)
        return h if attn is None else attn(h)
    if not recompute:
        return run(h, *cond)
    return recomputed(run, [block] if attn is None else [block, attn], h, *cond)


class GBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cond_dim: int) -> None:
        super().__init__()
        self.bn1 = ConditionalBatchNorm(cin, cond_dim)
        self.conv1 = _sn_conv(cin, cout)
        self.bn2 = ConditionalBatchNorm(cout, cond_dim)
        self.conv2 = _sn_conv(cout, cout)
        self.skip = _sn_conv(cin, cout, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, cond)), scale_factor=2.0)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), cond)))
        return h + self.skip(F.interpolate(x, scale_factor=2.0))


class Generator(nn.Module):
    """(z, class labels) -> image in [-1, 1]; z is split into one chunk per block plus one."""

    recompute = False

    def __init__(self, image_size: int = 128, channels: int = 3, z_dim: int = 120,
                 width: int = 32, num_classes: int = 1, shared_dim: int = 128,
                 attention_res: int = 64) -> None:
        super().__init__()
        ins, outs = G_ARCH[image_size]
        self.z_dim = z_dim
        self.chunk = z_dim // (len(ins) + 1)
        self.bottom = 4
        self.shared = nn.Embedding(num_classes, shared_dim)
        self.linear = _sn_linear(self.chunk, ins[0] * width * self.bottom**2)
        cond_dim = shared_dim + self.chunk
        self.blocks = nn.ModuleList()
        self.attn = nn.ModuleDict()
        res = self.bottom
        for i, (a, b) in enumerate(zip(ins, outs, strict=True)):
            self.blocks.append(GBlock(a * width, b * width, cond_dim))
            res *= 2
            if res == attention_res:
                self.attn[str(i)] = Attention(b * width)
        self.out_bn = nn.BatchNorm2d(outs[-1] * width)
        self.out_conv = _sn_conv(outs[-1] * width, channels)
        self.first_ch = ins[0] * width
        orthogonal_init(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        zs = torch.split(z, self.chunk, dim=1)
        shared = self.shared.weight.index_select(0, y)
        h = self.linear(zs[0]).view(z.shape[0], self.first_ch, self.bottom, self.bottom)
        attns = dict(self.attn.items())
        for i, block in enumerate(self.blocks):
            h = _stage(block, attns.get(str(i)), self.recompute, h,
                       torch.cat([shared, zs[i + 1]], dim=1))
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))


class DBlock(nn.Module):
    def __init__(self, cin: int, cout: int, downsample: bool, preactivation: bool) -> None:
        super().__init__()
        self.conv1 = _sn_conv(cin, cout)
        self.conv2 = _sn_conv(cout, cout)
        self.downsample = downsample
        self.preactivation = preactivation
        self.skip = _sn_conv(cin, cout, 1) if (cin != cout or downsample) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x) if self.preactivation else x
        h = self.conv2(F.relu(self.conv1(h)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        s = x
        if self.skip is not None:
            if self.preactivation:
                s = self.skip(s)
                s = F.avg_pool2d(s, 2) if self.downsample else s
            else:
                s = F.avg_pool2d(s, 2) if self.downsample else s
                s = self.skip(s)
        return h + s


class Discriminator(nn.Module):
    """Projection discriminator: (image, labels) -> one score per sample (hinge loss)."""

    recompute = False

    def __init__(self, image_size: int = 128, channels: int = 3, width: int = 32,
                 num_classes: int = 1, attention_res: int = 64) -> None:
        super().__init__()
        ins, outs, down = D_ARCH[image_size]
        ins = [channels, *[m * width for m in ins]]
        outs = [m * width for m in outs]
        self.blocks = nn.ModuleList()
        self.attn = nn.ModuleDict()
        res = image_size
        for i, (a, b) in enumerate(zip(ins, outs, strict=True)):
            self.blocks.append(DBlock(a, b, down[i], preactivation=i > 0))
            res = res // 2 if down[i] else res
            if res == attention_res and i < len(outs) - 1:
                self.attn[str(i)] = Attention(b)
        self.linear = _sn_linear(outs[-1], 1)
        self.embed = spectral_norm(nn.Embedding(num_classes, outs[-1]), eps=1e-6)
        orthogonal_init(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h, attns = x, dict(self.attn.items())
        for i, block in enumerate(self.blocks):
            h = _stage(block, attns.get(str(i)), self.recompute, h)
        h = F.relu(h).sum(dim=(2, 3))
        return self.linear(h).view(-1) + (self.embed.weight.index_select(0, y) * h).sum(dim=1)


def orthogonal_init(module: nn.Module) -> None:
    """BigGAN's orthogonal init of every conv, linear and embedding weight."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear | nn.Embedding):
            target = m.parametrizations.weight.original if hasattr(m, "parametrizations") \
                else m.weight
            if target.is_meta:
                continue  # shape-only model (parameter counting)
            with torch.no_grad():
                nn.init.orthogonal_(target)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


def d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Hinge loss for D."""
    return F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean()


def g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    return -fake_scores.mean()


def networks(shape: NetworkShape) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator), both conditioned on the class labels."""
    return (Generator(shape.image_size, shape.channels, shape.z_dim, shape.width,
                      shape.num_classes, attention_res=shape.attention_res),
            Discriminator(shape.image_size, shape.channels, shape.width, shape.num_classes,
                          attention_res=shape.attention_res))


RECIPE = Recipe(d_loss=d_loss, g_loss=g_loss, conditional=True, ema=True, joint_d=True)
