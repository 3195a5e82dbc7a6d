"""The trainer's command line and config file (docs/contracts.md)."""

from __future__ import annotations

import json

import pytest

from critbatch import vocabulary
from critbatch_trainer.__main__ import main
from critbatch_trainer.config import ConfigError, parse_args

REQ = ["--batch-size", "8", "--fid-threshold", "50", "--max-steps", "100"]


def test_defaults_follow_the_paper_per_optimizer() -> None:
    c = parse_args([*REQ, "--optimizer", "adabelief", "--termination-log", ""])
    assert (c.lr_g, c.lr_d, c.beta1_g, c.beta2_g, c.eps_g) == (3e-4, 3e-5, 0.5, 0.999, 1e-16)
    c = parse_args([*REQ, "--model", "wgan-gp", "--optimizer", "rmsprop"])
    assert (c.lr_g, c.lr_d, c.beta2_g, c.eps_d) == (3e-4, 1e-4, 0.99, 1e-8)
    c = parse_args([*REQ, "--model", "biggan", "--dataset", "digits", "--image-size", "32"])
    assert (c.lr_g, c.lr_d, c.beta1_g, c.eps_g, c.z_dim) == (1e-4, 4e-4, 0.0, 1e-6, 120)
    assert c.termination_log is None or c.termination_log == "/dev/termination-log"


def test_config_file_keys_are_flag_names_and_flags_override(tmp_path) -> None:
    f = tmp_path / "trial.yaml"
    f.write_text("batch_size: 4\nfid-threshold: 20\nmax_steps: 10\nlr_g: 0.001\nsweep: s1\n")
    c = parse_args(["--config", str(f), "--batch-size", "32"])
    assert (c.batch_size, c.fid_threshold, c.max_steps, c.lr_g, c.sweep) == (32, 20.0, 10,
                                                                              1e-3, "s1")
    j = tmp_path / "trial.json"
    j.write_text(json.dumps({"batch_size": 2, "fid_threshold": 1, "max_steps": 3}))
    assert parse_args(["--config", str(j)]).batch_size == 2


@pytest.mark.parametrize("args,field", [
    (["--batch-size", "0", "--fid-threshold", "5", "--max-steps", "9"], "batch-size"),
    (["--batch-size", "x", "--fid-threshold", "5", "--max-steps", "9"], "batch-size"),
    (["--batch-size", "4", "--fid-threshold", "-1", "--max-steps", "9"], "fid-threshold"),
    (["--batch-size", "4", "--fid-threshold", "5"], "max-steps"),
    ([*REQ, "--model", "stylegan"], "model"),
    ([*REQ, "--optimizer", "sgd"], "optimizer"),
    ([*REQ, "--beta2-g", "1.0"], "beta2-g"),
    ([*REQ, "--image-size", "48"], "image-size"),
    ([*REQ, "--model", "biggan", "--image-size", "16"], "image-size"),
    ([*REQ, "--dataset", "lsun"], "data-path"),
    ([*REQ, "--dataset", "celeba", "--data-path", "/nonexistent"], "extractor"),
    ([*REQ, "--extractor", "vgg"], "extractor"),
    ([*REQ, "--metrics-port", "70000"], "metrics-port"),
    ([*REQ, "--no-such-flag", "1"], "--no-such-flag"),
])
def test_bad_configuration_exits_2_with_one_line_naming_the_field(args, field, capsys) -> None:
    with pytest.raises(ConfigError):
        parse_args(args)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("critbatch-trainer: error: ")
    assert field in err[0]


def test_unknown_key_in_config_file_is_named(tmp_path, capsys) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("batch_size: 4\nfid_threshold: 1\nmax_steps: 1\nlearning_rate: 3\n")
    assert main(["--config", str(f)]) == 2
    assert "learning_rate" in capsys.readouterr().err


def test_missing_inception_file_exits_2(tmp_path, capsys) -> None:
    args = [*REQ, "--extractor", f"inception:{tmp_path}/none.pth", "--termination-log", "",
            "--stats-cache", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("critbatch-trainer: error: extractor:")


def test_cuda_requested_without_a_gpu_exits_2(tmp_path, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main([*REQ, "--device", "cuda", "--termination-log", "",
                 "--stats-cache", str(tmp_path)]) == 2
    assert "device:" in capsys.readouterr().err


def test_digits_defaults_are_the_cpu_demo_settings() -> None:
    c = parse_args(REQ)
    assert (c.dataset, c.model, c.image_size, c.channels, c.width, c.z_dim) == (
        "digits", "dcgan", 16, 1, 16, 32)
    assert (c.lr_g, c.lr_d, c.eval_every, c.eval_samples) == (1e-3, 1e-3, 20, 500)
    real = parse_args([*REQ, "--dataset", "imagefolder", "--data-path", "x",
                       "--extractor", "inception:w.pth"])
    assert (real.image_size, real.channels, real.width, real.z_dim) == (64, 3, 64, 100)
    assert (real.lr_g, real.lr_d, real.eval_every, real.eval_samples) == (1e-4, 3e-4, 100, 1000)


def test_threads_default_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("CRITBATCH_THREADS", "3")
    assert parse_args(REQ).threads == 3
    assert parse_args([*REQ, "--threads", "1"]).threads == 1


def test_every_setting_has_a_flag_with_help() -> None:
    from dataclasses import fields

    from critbatch_trainer.config import HELP, TrainerConfig

    assert {f.name for f in fields(TrainerConfig)} == set(HELP)


@pytest.mark.parametrize("model", vocabulary.MODELS)
@pytest.mark.parametrize("dataset", vocabulary.DATASETS)
@pytest.mark.parametrize("optimizer", vocabulary.OPTIMIZERS)
def test_every_default_is_the_vocabularys(model, dataset, optimizer) -> None:
    """The spec predicts a trial's settings from critbatch.vocabulary: the trainer agrees."""
    extra = [] if dataset in vocabulary.EMBEDDED_DATASETS else [
        "--data-path", "x", "--extractor", "inception:w.pth"]
    args = [*REQ, "--model", model, "--dataset", dataset, "--optimizer", optimizer, *extra]
    size = vocabulary.default_image_size(model, dataset)
    if vocabulary.image_size_problem(model, size):  # BigGAN on 16x16 digits
        with pytest.raises(ConfigError, match=r"^image-size: "):
            parse_args(args)
        return
    c = parse_args(args)
    g, d = vocabulary.optimizer_defaults(model, optimizer, dataset)
    assert (c.image_size, c.channels, c.width, c.z_dim, c.attention_res) == (
        size, vocabulary.default_channels(dataset), vocabulary.default_width(model, dataset),
        vocabulary.default_z_dim(model, dataset), vocabulary.default_attention_res(model, size))
    assert (c.eval_every, c.eval_samples) == (vocabulary.default_eval_every(dataset),
                                              vocabulary.default_eval_samples(dataset))
    assert (c.lr_g, c.beta1_g, c.beta2_g, c.eps_g) == (g.learning_rate, g.beta1, g.beta2, g.eps)
    assert (c.lr_d, c.beta1_d, c.beta2_d, c.eps_d) == (d.learning_rate, d.beta1, d.beta2, d.eps)


@pytest.mark.parametrize("args,message", [
    (["--model", "biggan", "--image-size", "32", "--z-dim", "90"],
     "z-dim: biggan at 32x32 splits z into 4 equal chunks, got 90"),
    (["--model", "biggan", "--image-size", "16"], "image-size: biggan supports 32, 64 or 128"),
    (["--image-size", "48"], "image-size: dcgan needs a power of two from 8 to 256, got 48"),
    (["--optimizer", "adabelief", "--cuda-graph"],
     "cuda-graph: not with adabelief, which counts its steps on the host"),
    (["--micro-batch", "4"], "micro-batch: not with dcgan, whose step uses one fake batch"),
    (["--model", "wgan-gp", "--recompute-activations"],
     "recompute-activations: only biggan, whose blocks are recomputed"),
    (["--fused-attention"], "fused-attention: only biggan, the one model with self-attention"),
    (["--model", "wgan-gp", "--micro-batch", "-1"],
     "micro-batch: must be an integer >= 0 (0 = the whole batch), got -1"),
])
def test_the_vocabularys_rules_name_the_flag(args, message) -> None:
    with pytest.raises(ConfigError) as e:
        parse_args([*REQ, *args])
    assert str(e.value).startswith(message)
