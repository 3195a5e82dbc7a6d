"""`--resident`: a real dataset decoded once into a uint8 array (cached on disk) serves the
same batches, labels and real images as the DataLoader path, and trains to the same result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from critbatch_trainer import resident as residency
from critbatch_trainer.__main__ import main
from critbatch_trainer.config import parse_args
from critbatch_trainer.data import TrainingData
from critbatch_trainer.datasets import to_unit
from critbatch_trainer.loop import Trial
from critbatch_trainer.settings import GROUP_SIZE_ENV, ConfigError, Resident

CPU = torch.device("cpu")
N_IMAGES = 40


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 PNGs of varied sizes and modes (some smaller than the output, some grayscale)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        cls = root / ("cats" if i % 3 else "dogs")
        cls.mkdir(exist_ok=True)
        h, w = rng.integers(9, 57, size=2)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        (image.convert("L") if i % 7 == 0 else image).save(cls / f"{i}.png")
    return root


def _data(folder: Path, resident: str, cache: Path | None = None, channels: int = 3,
          workers: int = 0) -> TrainingData:
    return TrainingData("imagefolder", image_size=16, channels=channels, data_path=str(folder),
                        workers=workers, resident=Resident(resident), device=CPU,
                        cache_dir=cache)


@pytest.mark.parametrize("channels", [3, 1])
def test_resident_batches_labels_and_real_images_equal_the_dataloader_path(
        folder, tmp_path, channels) -> None:
    loader = _data(folder, "off", channels=channels)
    resident = _data(folder, "on", tmp_path, channels=channels)
    assert loader.resident is None and resident.resident is not None
    images, labels = resident.resident
    assert images.dtype == torch.uint8 and images.shape == (N_IMAGES, channels, 16, 16)
    assert sorted(set(labels.tolist())) == [0, 1]
    # Batch 0 on, and batch 13 of b = 6 (position 78: the second epoch of 40) on, each
    # crossing epoch boundaries.
    for start in (0, 13):
        a, b = loader.batches(5, 6, start, CPU), resident.batches(5, 6, start, CPU)
        for _ in range(15):
            (xa, ya), (xb, yb) = next(a), next(b)
            assert xb.dtype == torch.float32
            torch.testing.assert_close(xb, xa, rtol=0, atol=1e-6)
            assert torch.equal(xb, xa)  # on the CPU the two conversions agree bit for bit
            assert torch.equal(ya, yb)
    real = [torch.cat(list(d.real_images(30, chunk=7))) for d in (loader, resident)]
    assert real[0].shape == (30, channels, 16, 16) and torch.equal(real[0], real[1])


def test_the_conversion_is_the_dataloaders_to_tensor_and_normalize() -> None:
    from torchvision import transforms as T

    k = torch.arange(256, dtype=torch.uint8).view(1, 16, 16).repeat(3, 1, 1)
    reference = T.Normalize([0.5] * 3, [0.5] * 3)(k.float().div(255))
    assert torch.equal(to_unit(k), reference)


def test_cache_is_written_once_reused_and_rewritten_when_damaged(
        folder, tmp_path, monkeypatch, capsys) -> None:
    key = _data(folder, "off").key
    (tmp_path / f"{key}.u8.npy123.tmp").write_bytes(b"left by a killed run")
    first = _data(folder, "on", tmp_path, workers=2)
    images_file = tmp_path / f"{key}.u8.npy"
    assert images_file.is_file() and (tmp_path / f"{key}.labels.npy").is_file()
    assert not list(tmp_path.glob("*.tmp"))
    assert np.array_equal(np.load(images_file), first.resident[0].numpy())
    size = images_file.stat().st_size

    decode = residency._decode
    calls: list[int] = []

    def counting(*args, **kwargs):
        calls.append(1)
        return decode(*args, **kwargs)

    monkeypatch.setattr(residency, "_decode", counting)
    second = _data(folder, "on", tmp_path)
    assert calls == []
    assert torch.equal(second.resident[0], first.resident[0])
    assert torch.equal(second.resident[1], first.resident[1])

    capsys.readouterr()
    with images_file.open("r+b") as fh:
        fh.truncate(size // 2)
    third = _data(folder, "on", tmp_path)
    assert calls == [1]
    assert "warning: ignoring the data cache" in capsys.readouterr().err
    assert images_file.stat().st_size == size
    assert torch.equal(third.resident[0], first.resident[0])


def test_an_unwritable_cache_only_costs_the_cache(folder, tmp_path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    d = _data(folder, "on", blocker / "cache")
    assert d.resident is not None and d.resident[0].shape[0] == N_IMAGES
    assert "warning: cannot write the data cache" in capsys.readouterr().err


def test_auto_on_the_cpu_is_the_dataloader_path(folder, tmp_path) -> None:
    assert _data(folder, "auto", tmp_path).resident is None
    assert not list(tmp_path.iterdir())
    digits = TrainingData("digits", image_size=16, channels=1, resident=Resident.ON, device=CPU,
                          cache_dir=tmp_path)
    assert digits.resident is None and digits.embedded is not None


def test_auto_on_cuda_takes_a_quarter_of_the_free_memory_shared_by_a_group(
        monkeypatch, capsys) -> None:
    use = residency.use_resident
    on, off, auto = Resident.ON, Resident.OFF, Resident.AUTO
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda _device=None: (4000, 8000))
    monkeypatch.delenv(GROUP_SIZE_ENV, raising=False)
    assert use(auto, cuda, (10, 1, 10, 10))  # 1000 bytes
    assert not use(auto, cuda, (10, 1, 10, 11))
    assert "data not resident" in capsys.readouterr().err
    assert use(on, cuda, (10, 1, 10, 11))
    with pytest.raises(ConfigError, match=r"^resident:"):
        use(on, cuda, (40, 1, 10, 11))
    assert not use(off, cuda, (1, 1, 1, 1))
    monkeypatch.setenv(GROUP_SIZE_ENV, "4")
    assert use(auto, cuda, (10, 1, 5, 5))
    assert not use(auto, cuda, (10, 1, 5, 6))


def test_resident_flag_default_and_bad_value(capsys) -> None:
    req = ["--batch-size", "8", "--fid-threshold", "50", "--max-steps", "100"]
    assert parse_args(req).resident == "auto"
    assert parse_args([*req, "--resident", "on"]).resident == "on"
    assert main([*req, "--resident", "always"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("critbatch-trainer: error: resident:")


def _trial(folder: Path, tmp_path: Path, resident: str, max_steps: int, run: str) -> Trial:
    cfg = parse_args([
        "--dataset", "imagefolder", "--data-path", str(folder), "--image-size", "16",
        "--channels", "1", "--extractor", "digits", "--width", "8", "--z-dim", "16",
        "--batch-size", "8", "--fid-threshold", "0.001", "--max-steps", str(max_steps),
        "--eval-every", "10", "--eval-samples", "100", "--real-samples", "40", "--workers", "0",
        "--resident", resident, "--termination-log", "",
        # Each run computes its own real statistics, from its own path to the images.
        "--stats-cache", str(tmp_path / f"cache-{run}"),
        "--checkpoint-dir", str(tmp_path / f"ckpt-{run}")])
    return Trial.create(cfg, log=lambda _msg: None)


def test_training_is_the_same_with_and_without_residency(folder, tmp_path) -> None:
    def result(trial: Trial) -> dict:
        r = trial.run()
        r.pop("wall_seconds")
        return r

    off = _trial(folder, tmp_path, "off", 30, "off")
    on = _trial(folder, tmp_path, "on", 30, "on")
    assert off.data.resident is None and on.data.resident is not None
    assert np.array_equal(off.reference.mu, on.reference.mu)
    assert np.array_equal(off.reference.sigma, on.reference.sigma)
    expected = result(off)
    assert expected["steps"] == 30 and expected["fid"] > 0
    assert result(on) == expected
    # Residency is not part of a checkpoint's identity: a resident run resumed without it
    # (and from the same data position) ends exactly where an uninterrupted one does.
    assert result(_trial(folder, tmp_path, "on", 20, "mixed"))["steps"] == 20
    resumed = _trial(folder, tmp_path, "off", 30, "mixed")
    assert resumed.restore()
    assert result(resumed) == expected
