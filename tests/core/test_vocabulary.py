"""The vocabulary: one spelling of a trial, one parser of trial lists, rules stated once."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from critbatch.errors import InputError
from critbatch.science import PAPER_LEARNING_RATES
from critbatch.vocabulary import (
    BIGGAN_SIZES,
    DATASETS,
    MAX_TRIALS_PER_GROUP,
    MODELS,
    OPTIMIZERS,
    TrialKey,
    TrialsError,
    cuda_graph_problem,
    default_attention_res,
    default_image_size,
    image_size_problem,
    optimizer_defaults,
    parse_trials,
    trials_text,
    z_dim_problem,
)

keys = st.builds(TrialKey, st.integers(1, 1 << 20), st.integers(0, 31))
groups = st.lists(keys, min_size=1, max_size=MAX_TRIALS_PER_GROUP, unique=True)


def test_a_trial_has_one_name():
    assert TrialKey(8, 0).name == "b8-s0"
    assert TrialKey(1024, 31).name == "b1024-s31"


@given(groups)
def test_trial_lists_read_back_as_written(group):
    assert parse_trials(trials_text(group)) == group


@given(st.lists(keys, min_size=MAX_TRIALS_PER_GROUP + 1, max_size=20, unique=True))
def test_a_group_holds_at_most_eight_trials(group):
    with pytest.raises(TrialsError, match=f"at most {MAX_TRIALS_PER_GROUP} pairs"):
        parse_trials(trials_text(group))


@pytest.mark.parametrize("text, problem", [
    ("", "expected batch_size:seed"),
    ("8:0,", "expected batch_size:seed"),
    ("8", "is not batch_size:seed"),
    ("0:0", "batch size must be an integer >= 1"),
    ("8:-1", "seed must be an integer >= 0"),
    ("8:x", "seed must be an integer >= 0"),
    ("8:1e3", "seed must be an integer >= 0"),
    ("8:" + "9" * 40, "seed must be an integer >= 0"),
    ("8:0,8:0", "is given twice"),
])
def test_bad_trial_lists_say_what_is_wrong(text, problem):
    with pytest.raises(TrialsError, match=problem) as err:
        parse_trials(text)
    assert isinstance(err.value, InputError) and str(err.value).startswith("trials: ")


def test_every_model_and_optimizer_has_defaults():
    for model in MODELS:
        for optimizer in OPTIMIZERS:
            g, d = optimizer_defaults(model, optimizer)
            assert (g.learning_rate, d.learning_rate) == PAPER_LEARNING_RATES[(model, optimizer)]
            assert (g.beta1, g.beta2, g.eps) == (d.beta1, d.beta2, d.eps)


def test_the_digits_demo_is_the_one_exception_to_the_papers_rates():
    g, d = optimizer_defaults("dcgan", "adam", "digits")
    assert (g.learning_rate, d.learning_rate) == (1e-3, 1e-3)
    for model, optimizer in PAPER_LEARNING_RATES:
        if (model, optimizer) != ("dcgan", "adam"):
            assert optimizer_defaults(model, optimizer, "digits") == \
                optimizer_defaults(model, optimizer)


def test_default_image_sizes_satisfy_the_image_size_rule():
    """Except BigGAN on digits, whose 16x16 images are smaller than BigGAN's 32x32."""
    for model in MODELS:
        for dataset in DATASETS:
            size = default_image_size(model, dataset)
            needs_size = (model, dataset) == ("biggan", "digits")
            assert (image_size_problem(model, size) is not None) == needs_size
            assert default_attention_res(model, size) < size


@given(st.integers(1, 1024))
def test_image_sizes_are_powers_of_two_from_8_to_256(size):
    ok = size in (8, 16, 32, 64, 128, 256)
    assert (image_size_problem("dcgan", size) is None) == ok
    assert (image_size_problem("biggan", size) is None) == (size in BIGGAN_SIZES)


@given(st.sampled_from(BIGGAN_SIZES), st.integers(1, 1024))
def test_biggan_splits_z_into_equal_chunks(size, z_dim):
    chunks = {32: 4, 64: 5, 128: 6}[size]
    assert (z_dim_problem("biggan", size, z_dim) is None) == (z_dim % chunks == 0)
    assert z_dim_problem("dcgan", size, z_dim) is None


def test_only_an_optimizer_that_counts_steps_on_the_device_replays_as_a_cuda_graph():
    assert cuda_graph_problem("adam") is None and cuda_graph_problem("rmsprop") is None
    assert "not with adabelief" in cuda_graph_problem("adabelief")
