"""The embedded datasets and the stateless data order that makes resuming exact."""

from __future__ import annotations

import torch

from critbatch_trainer.data import TrainingData, epoch_permutation, stream_indices


def test_stream_is_a_sequence_of_permutations_and_slices_compose() -> None:
    n = 7
    whole = stream_indices(3, n, 0, 5 * n)
    for epoch in range(5):
        chunk = whole[epoch * n:(epoch + 1) * n]
        assert sorted(chunk.tolist()) == list(range(n))
        assert torch.equal(chunk, epoch_permutation(3, epoch, n))
    parts = torch.cat([stream_indices(3, n, s, 4) for s in range(0, 32, 4)])
    assert torch.equal(parts, whole[:32])
    assert not torch.equal(stream_indices(4, n, 0, n), whole[:n])


def test_batches_resume_at_any_step() -> None:
    data = TrainingData("digits", image_size=16, channels=1)
    cpu = torch.device("cpu")
    it = data.batches(0, 16, 0, cpu)
    first = [next(it) for _ in range(200)]  # crosses an epoch boundary (1797 / 16)
    resumed = data.batches(0, 16, 150, cpu)
    for k in range(150, 200):
        x, y = next(resumed)
        assert torch.equal(x, first[k][0]) and torch.equal(y, first[k][1])


def test_embedded_datasets_need_no_download_and_have_their_sizes() -> None:
    digits = TrainingData("digits", image_size=32, channels=3)
    assert digits.size == 1797 and digits.num_classes == 10
    x = digits.embedded.images
    assert x.shape == (1797, 3, 32, 32)
    assert x.min() >= -1 and x.max() <= 1 and x.max() > 0.9
    faces = TrainingData("faces", image_size=32, channels=1)
    assert faces.size == 100 and faces.embedded.images.shape == (100, 1, 32, 32)
    assert digits.key != TrainingData("digits", image_size=16, channels=3).key


def test_digits_are_scikit_learns_read_without_importing_it() -> None:
    """The file is read directly (importing scikit-learn costs seconds per trial), and the
    images and labels are exactly those of scikit-learn's loader."""
    import subprocess
    import sys

    probe = ("import sys; from critbatch_trainer.embedded import load_digits_images; "
             "load_digits_images(8); print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
    from sklearn.datasets import load_digits

    from critbatch_trainer.embedded import load_digits_images

    ours, theirs = load_digits_images(8), load_digits()
    assert torch.equal(ours.images[:, 0], torch.from_numpy(theirs.images / 16.0).float() * 2 - 1)
    assert torch.equal(ours.labels, torch.from_numpy(theirs.target).long())
