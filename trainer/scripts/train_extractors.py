"""Train the small feature classifiers of the embedded datasets and write their weights.

    python trainer/scripts/train_extractors.py [--out DIR] [--only digits|faces] [--epochs N]

Deterministic: one CPU thread, fixed seeds, so a rerun on the same software reproduces the
shipped files under trainer/critbatch_trainer/weights/ (their sha256 is in the .json).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

from critbatch_trainer.embedded import load_digits_images, load_lfw_subset
from critbatch_trainer.extractors import WEIGHTS_DIR, SmallClassifier

SPECS = {
    # name: (input size, widths, features, epochs, loader)
    "digits": (16, (16, 32), 64, 30, lambda: load_digits_images(16, 1)),
    "faces": (32, (8, 16, 16), 64, 60, lambda: load_lfw_subset(32, 1, faces_only=False)),
}


def _augment(x: torch.Tensor, rng: torch.Generator, max_shift: int) -> torch.Tensor:
    """Random integer translations (zero-filled with the background value -1) and noise."""
    n, _, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=rng)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=rng)
    out = torch.stack([pad[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    return out + 0.05 * torch.randn(out.shape, generator=rng)


def train(name: str, epochs: int | None = None, seed: int = 0) -> tuple[dict, bytes]:
    size, widths, feats, default_epochs, loader = SPECS[name]
    epochs = default_epochs if epochs is None else epochs
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    data = loader()
    x, y = data.images, data.labels
    perm = torch.randperm(len(x), generator=rng)
    n_val = len(x) // 5
    val, tr = perm[:n_val], perm[n_val:]
    net = SmallClassifier(size, 1, int(y.max()) + 1, widths, feats)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(epochs):
        net.train()
        order = tr[torch.randperm(len(tr), generator=rng)]
        for i in range(0, len(order), 64):
            idx = order[i:i + 64]
            loss = F.cross_entropy(net(_augment(x[idx], rng, max(1, size // 16))), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(x[val]).argmax(1) == y[val]).float().mean().item()
    buf = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in net.state_dict().items()}, buf)
    blob = buf.getvalue()
    meta = {
        "name": name, "input_size": size, "channels": 1, "num_classes": int(y.max()) + 1,
        "widths": list(widths), "features": feats, "epochs": epochs, "seed": seed,
        "validation_accuracy": round(acc, 4), "validation_examples": int(n_val),
        "sha256": hashlib.sha256(blob).hexdigest(), "torch": torch.__version__.split("+")[0],
    }
    return meta, blob


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(WEIGHTS_DIR))
    p.add_argument("--only", choices=sorted(SPECS))
    p.add_argument("--epochs", type=int)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in [args.only] if args.only else sorted(SPECS):
        meta, blob = train(name, args.epochs)
        (out / f"{name}.pt").write_bytes(blob)
        (out / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
        print(f"{name}: validation accuracy {meta['validation_accuracy']:.3f}, "
              f"{len(blob)} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
