"""The Fréchet distance against its closed form, and the feature extractors."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from critbatch_trainer import extractors, fid
from critbatch_trainer.inception import FidInceptionV3


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_identical_gaussians_are_at_distance_zero() -> None:
    rng = np.random.default_rng(1)
    mu, s = rng.normal(size=8), _random_spd(rng, 8)
    assert fid.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-8)


def test_diagonal_covariances_match_closed_form() -> None:
    # Commuting covariances: d^2 = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.1, 4, size=6), rng.uniform(0.1, 4, size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)


def test_scaled_full_covariance_matches_closed_form() -> None:
    # S2 = c^2 S1 (not diagonal): tr(S1 + c^2 S1 - 2c S1) = (1 - c)^2 tr(S1).
    rng = np.random.default_rng(3)
    s1 = _random_spd(rng, 10)
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    c = 2.5
    expected = np.sum((mu1 - mu2) ** 2) + (1 - c) ** 2 * np.trace(s1)
    assert fid.frechet_distance(mu1, s1, mu2, c**2 * s1) == pytest.approx(expected, rel=1e-9)
    assert fid.frechet_distance(mu2, c**2 * s1, mu1, s1) == pytest.approx(expected, rel=1e-9)


def test_sample_statistics_converge_to_the_closed_form() -> None:
    rng = np.random.default_rng(4)
    a, b = np.array([1.0, 2.0, 0.5]), np.array([0.25, 2.0, 3.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, -1.0, 0.5])
    x = rng.normal(size=(200_000, 3)) * np.sqrt(a) + mu1
    y = rng.normal(size=(200_000, 3)) * np.sqrt(b) + mu2
    stats = fid.RunningStats()
    for chunk in np.array_split(x, 7):
        stats.add(torch.from_numpy(chunk))
    m1, s1 = stats.result()
    np.testing.assert_allclose(s1, np.cov(x, rowvar=False), atol=1e-9)
    m2, s2 = fid.gaussian_stats(y)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fid.frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, abs=0.02)


def test_real_statistics_are_cached_by_key(tmp_path) -> None:
    calls = []

    def compute():
        calls.append(1)
        return np.arange(3.0), np.eye(3)

    mu, sigma = fid.cached_real_stats(tmp_path, "k1", compute)
    mu2, sigma2 = fid.cached_real_stats(tmp_path, "k1", compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    fid.cached_real_stats(tmp_path, "k2", compute)
    assert len(calls) == 2
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("name", ["digits", "faces"])
def test_shipped_classifier_is_small_matches_its_record_and_separates_classes(name) -> None:
    from critbatch_trainer.embedded import load_digits_images, load_lfw_subset

    weights, meta_path = extractors.classifier_paths(name)
    meta = json.loads(meta_path.read_text())
    blob = weights.read_bytes()
    assert len(blob) < 200_000
    assert hashlib.sha256(blob).hexdigest() == meta["sha256"]
    ex = extractors.load_classifier(name)
    data = (load_digits_images(16) if name == "digits"
            else load_lfw_subset(32, faces_only=False))
    with torch.no_grad():
        pred = ex.network(data.images).argmax(1)
    assert (pred == data.labels).float().mean().item() > 0.95
    feats = ex(data.images[:50])
    assert feats.shape == (50, meta["features"])


def test_extractor_script_is_deterministic() -> None:
    import importlib.util
    from pathlib import Path

    script = Path(__file__).parents[2] / "trainer" / "scripts" / "train_extractors.py"
    spec = importlib.util.spec_from_file_location("train_extractors", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        meta1, blob1 = mod.train("digits", epochs=1)
        meta2, blob2 = mod.train("digits", epochs=1)
    finally:
        torch.set_num_threads(threads)
    assert blob1 == blob2
    assert meta1["sha256"] == meta2["sha256"]


def test_extractor_resizes_and_converts_channels() -> None:
    ex = extractors.load_classifier("digits")
    rgb64 = torch.rand(4, 3, 64, 64) * 2 - 1
    assert ex(rgb64).shape == (4, 64)


def _torchvision_fid_inception():
    """torchvision's Inception3 with 1008 classes: the layout of the FID weight file."""
    import torchvision

    return torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008,
                                           init_weights=False)


def test_inception_matches_the_fid_weight_layout_and_loads_a_file(tmp_path) -> None:
    reference = _torchvision_fid_inception().state_dict()
    ours = FidInceptionV3().state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in reference.items()}
    path = tmp_path / "pt_inception.pth"
    torch.save(reference, path)
    ex = extractors.load_inception(str(path))
    assert ex.fingerprint.startswith("inception-")
    out = ex(torch.rand(2, 1, 32, 32) * 2 - 1)
    assert out.shape == (2, 2048)


def test_inception_never_downloads_unless_allowed(tmp_path) -> None:
    with pytest.raises(extractors.ExtractorError, match=r"^extractor: .*--allow-download"):
        extractors.load_inception(str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(extractors.ExtractorError, match=r"^extractor: .*not FID Inception"):
        extractors.load_inception(str(bad))
