"""Acceptance: a CPU DCGAN on digits reaches a loose FID; seeds, restarts and metrics.

One uninterrupted reference run (a subprocess serving metrics during its linger) is shared by
the tests that compare against it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from loopback import free_port
from prometheus_client.parser import text_string_to_metric_families
from trainer_helpers import QUICK, run_trainer, trainer_cmd

from critbatch_trainer import checkpoint
from critbatch_trainer.config import parse_args
from critbatch_trainer.loop import Trial, interpolate_crossing
from critbatch_trainer.settings import ConfigError

pytestmark = pytest.mark.timeout(300)


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, stats_cache):
    """The uninterrupted run: its result, termination message, and a scrape during linger."""
    d = tmp_path_factory.mktemp("reference")
    port = free_port()
    term = d / "termination-log"
    args = [*QUICK, "--stats-cache", str(stats_cache), "--termination-log", str(term),
            "--metrics-port", str(port), "--metrics-host", "127.0.0.1", "--linger", "30",
            "--sweep", "acceptance"]
    proc = subprocess.Popen(trainer_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 240
        while not term.exists() or not term.read_text():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the reference run did not finish"
            time.sleep(0.2)
        scraped = _scrape(port)
        proc.send_signal(signal.SIGTERM)  # ends the linger early
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    return {"result": result, "term": term.read_text(), "scraped": scraped, "stderr": err}


def test_dcgan_on_digits_reaches_a_loose_threshold_and_reports_n(reference) -> None:
    r = reference["result"]
    assert r["reached"] is True
    assert 0 < r["steps"] < r["max_steps"] and r["steps"] % 20 == 0
    assert r["sfo"] == r["steps"] * r["batch_size"] == r["steps"] * 16
    assert r["fid"] <= r["threshold"] == 500
    assert r["dataset_size"] == 1797
    assert r["generator_params"] > 0 and r["wall_seconds"] > 0
    if r["interpolated_steps"] is not None:
        assert r["steps"] - 20 < r["interpolated_steps"] <= r["steps"]
    keys = {"sweep", "batch_size", "seed", "reached", "steps", "interpolated_steps", "sfo",
            "fid", "threshold", "max_steps", "wall_seconds", "generator_params",
            "dataset_size", "hardware"}
    assert keys <= set(r)
    hw = r["hardware"]
    assert set(hw) == {"device", "cpu", "isa", "torch", "threads", "reproducible"}
    assert (hw["device"], hw["threads"], hw["reproducible"]) == ("cpu", 1, False)
    assert hw["isa"] == torch.backends.cpu.get_cpu_capability()
    assert hw["torch"] == torch.__version__ and 0 < len(hw["cpu"]) <= 40


def test_termination_message_is_the_same_json(reference) -> None:
    assert len(reference["term"].encode()) < 4096
    assert json.loads(reference["term"]) == reference["result"]


def test_metrics_endpoint_exposes_every_metric_with_sane_values(reference) -> None:
    r, m = reference["result"], reference["scraped"]
    trial = (("batch_size", "16"), ("seed", "0"), ("sweep", "acceptance"))

    def get(name, **extra):
        return m[(name, tuple(sorted((*trial, *extra.items()))))]

    assert get("critbatch_trainer_step") == r["steps"]
    assert get("critbatch_trainer_samples_total") == r["sfo"]
    assert get("critbatch_trainer_fid") == pytest.approx(r["fid"], rel=1e-6)
    assert get("critbatch_trainer_steps_to_threshold") == r["steps"]
    assert get("critbatch_trainer_reached") == 1
    assert get("critbatch_trainer_finished") == 1
    assert get("critbatch_trainer_max_steps") == 400
    assert get("critbatch_trainer_generator_parameters") == r["generator_params"]
    assert get("critbatch_trainer_dataset_size") == 1797
    hw = {k: str(v).lower() if isinstance(v, bool) else str(v)
          for k, v in r["hardware"].items()}
    assert get("critbatch_trainer_hardware_info", gpu="", **hw) == 1
    for net in ("generator", "discriminator"):
        assert get("critbatch_trainer_loss", network=net) > 0
        assert get("critbatch_trainer_grad_norm", network=net) > 0
    assert get("critbatch_trainer_gradient_noise_scale") > 0
    assert get("critbatch_trainer_step_duration_seconds_count") == r["steps"]
    assert 0 < get("critbatch_trainer_step_duration_seconds_sum") < r["wall_seconds"]
    every = {name for name, _ in m}
    assert all(n.startswith("critbatch_trainer_") for n in every if "trainer" in n)
    for (name, labels) in m:
        if name.startswith("critbatch_trainer_"):
            assert set(trial) <= set(labels), name


def _run_in_process(tmp_path: Path, stats_cache: Path, *extra: str) -> Trial:
    cfg = parse_args([*QUICK, "--stats-cache", str(stats_cache), "--termination-log", "",
                      *extra])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trial = Trial.create(cfg, log=lambda _msg: None)
        trial.restore()
        trial.run()
    finally:
        torch.set_num_threads(threads)
    return trial


def test_same_seed_gives_the_same_fid_curve_and_n(reference, tmp_path, stats_cache) -> None:
    trial = _run_in_process(tmp_path, stats_cache)
    assert trial.result()["steps"] == reference["result"]["steps"]
    assert trial.result()["fid"] == reference["result"]["fid"]
    logged = re.findall(r"^step (\d+) fid ([\d.]+)", reference["stderr"], re.M)
    assert [(int(s), f) for s, f in logged] == [(s, f"{f:.3f}") for s, f in
                                                trial.progress.history]
    other = _run_in_process(tmp_path, stats_cache, "--seed", "1")
    assert other.progress.history[:3] != trial.progress.history[:3]


def _wait_for_checkpoint(proc: subprocess.Popen, directory: Path, min_step: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it was interrupted"
        if checkpoint.path(directory).exists():
            try:
                if checkpoint.load(directory)["step"] >= min_step:
                    return
            except Exception:
                pass  # between writes
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def test_kill_9_and_resume_gives_exactly_the_same_n(reference, tmp_path, stats_cache) -> None:
    ckpt = tmp_path / "ckpt"
    args = [*QUICK, "--stats-cache", str(stats_cache), "--termination-log", "",
            "--checkpoint-dir", str(ckpt), "--checkpoint-every", "10"]
    proc = subprocess.Popen(trainer_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        _wait_for_checkpoint(proc, ckpt, 40)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    interrupted_at = checkpoint.load(ckpt)["step"]
    assert interrupted_at < reference["result"]["steps"]
    done = run_trainer(*args)
    assert done.returncode == 0, done.stderr
    resumed = json.loads(done.stdout.strip().splitlines()[-1])
    ref = reference["result"]
    assert (resumed["steps"], resumed["fid"], resumed["reached"]) == (
        ref["steps"], ref["fid"], ref["reached"])
    # A restart after the end reports the same result without training again.
    again = run_trainer(*args)
    assert json.loads(again.stdout.strip().splitlines()[-1])["steps"] == ref["steps"]


def test_sigterm_saves_a_checkpoint_and_exits_143(reference, tmp_path, stats_cache) -> None:
    ckpt, term = tmp_path / "ckpt", tmp_path / "term"
    args = [*QUICK, "--stats-cache", str(stats_cache), "--termination-log", str(term),
            "--checkpoint-dir", str(ckpt), "--checkpoint-every", "1000"]
    proc = subprocess.Popen(trainer_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 120
        while "step 20 fid" not in (line := proc.stderr.readline()):
            assert line or proc.poll() is None, "the run ended early"
            assert time.monotonic() < deadline
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143
    assert out.strip() == "" and not term.exists()
    state = checkpoint.load(ckpt)
    assert 20 <= state["step"] < reference["result"]["steps"]
    done = run_trainer(*args)
    assert done.returncode == 0, done.stderr
    assert json.loads(term.read_text())["steps"] == reference["result"]["steps"]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch) -> None:
    checkpoint.save(tmp_path, {"step": 1})

    def crash(obj, fh):
        fh.write(b"partial")
        raise KeyboardInterrupt  # as if killed mid-write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, {"step": 2})
    monkeypatch.undo()
    assert checkpoint.load(tmp_path) == {"step": 1}
    assert not list(tmp_path.glob("*.tmp"))


def test_censored_run_reports_the_steps_done(tmp_path, stats_cache) -> None:
    cfg = parse_args(["--batch-size", "4", "--fid-threshold", "0.001", "--max-steps", "30",
                      "--eval-every", "20", "--eval-samples", "100", "--threads", "1",
                      "--stats-cache", str(stats_cache), "--termination-log", ""])
    trial = Trial.create(cfg, log=lambda _msg: None)
    r = trial.run()
    assert (r["reached"], r["steps"], r["sfo"], r["interpolated_steps"]) == (False, 30, 120,
                                                                             None)
    assert [s for s, _ in trial.progress.history] == [20, 30]


@pytest.mark.parametrize("model,extra", [
    ("wgan-gp", ["--n-critic", "2"]),
    ("biggan", ["--image-size", "32", "--width", "4", "--ema-start", "2"]),
    ("dcgan", ["--dataset", "faces", "--optimizer", "rmsprop"]),
    ("dcgan", ["--optimizer", "adabelief", "--image-size", "32"]),
])
def test_other_models_train_on_digits(model, extra, tmp_path, stats_cache) -> None:
    cfg = parse_args(["--model", model, "--batch-size", "8", "--fid-threshold", "0.001",
                      "--max-steps", "4", "--eval-every", "2", "--eval-samples", "64",
                      "--gns-every", "2", "--threads", "1", "--stats-cache", str(stats_cache),
                      "--termination-log", "", "--checkpoint-dir", str(tmp_path), *extra])
    r = Trial.create(cfg, log=lambda _msg: None).run()
    assert r["steps"] == 4 and r["fid"] > 0 and not r["reached"]
    assert checkpoint.load(tmp_path)["step"] == 4


def test_biggan_scores_real_and_fake_in_one_pass_and_keeps_older_checkpoints_apart(
        tmp_path, stats_cache) -> None:
    """BigGAN's D sees the real and the fake batch as one, as BigGAN-PyTorch's does (one
    spectral-norm power iteration per D update); a checkpoint written while the two passes
    were apart (no `joint_d` in its identity) is refused, not resumed with other numerics."""
    cfg = parse_args(["--model", "biggan", "--image-size", "32", "--width", "4",
                      "--batch-size", "8", "--fid-threshold", "0.001", "--max-steps", "2",
                      "--eval-every", "2", "--eval-samples", "64", "--gns-every", "0",
                      "--threads", "1", "--stats-cache", str(stats_cache),
                      "--termination-log", "", "--checkpoint-dir", str(tmp_path)])
    trial = Trial.create(cfg, log=lambda _msg: None)
    batch_sizes = []
    trial.gan.D.register_forward_hook(lambda _m, args, _out: batch_sizes.append(len(args[0])))
    trial.run()
    assert batch_sizes == [16, 8, 16, 8]  # per step: D's update on real + fake, then G's
    state = checkpoint.load(tmp_path)
    assert state["identity"]["joint_d"] is True
    del state["identity"]["joint_d"]
    checkpoint.save(tmp_path, state)
    with pytest.raises(ConfigError, match="joint real and fake discriminator pass = False"):
        Trial.create(cfg, log=lambda _msg: None).restore()


@pytest.mark.parametrize("model,extra", [
    ("dcgan", []),
    ("wgan-gp", ["--n-critic", "2"]),
    ("biggan", ["--image-size", "32", "--width", "4", "--ema-start", "0"]),
])
def test_a_steps_arithmetic_draws_nothing_so_a_cuda_graph_can_replay_it(
        model, extra, stats_cache) -> None:
    """A CUDA graph replays device work only: every batch and random number of a step is drawn
    before its arithmetic (`Gan._draw`), none inside it (`Gan._train`), for every model."""
    cfg = parse_args(["--model", model, "--batch-size", "8", "--fid-threshold", "0.001",
                      "--max-steps", "2", "--eval-samples", "64", "--gns-every", "0",
                      "--threads", "1", "--stats-cache", str(stats_cache),
                      "--termination-log", "", *extra])
    trial = Trial.create(cfg, log=lambda _msg: None)
    gan = trial.gan
    draw = gan._draw(trial.data.batches(cfg.seed, 8, 0, trial.device))
    assert len(draw.critic) == gan.batches_per_step == (2 if model == "wgan-gp" else 1)
    assert all((c.eps is not None) == (model == "wgan-gp") for c in draw.critic)
    assert (draw.generator is None) == (model == "dcgan")
    def states():
        return [gan.rng.get_state(), gan.device_rng.get_state(), torch.get_rng_state()]

    before = states()
    gan._train(draw)
    assert all(torch.equal(a, b) for a, b in zip(states(), before, strict=True))


def test_interpolated_crossing() -> None:
    assert interpolate_crossing((100, 80.0), (200, 60.0), 70.0) == 150.0
    assert interpolate_crossing((100, 80.0), (200, 75.0), 70.0) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("model,extra", [
    ("dcgan", ["--image-size", "64", "--channels", "3", "--width", "64", "--z-dim", "100"]),
    ("biggan", ["--image-size", "128", "--channels", "3", "--width", "32"]),
])
def test_models_train_on_cuda(model, extra, tmp_path, stats_cache) -> None:
    cfg = parse_args(["--model", model, "--device", "cuda", "--batch-size", "32",
                      "--fid-threshold", "0.001", "--max-steps", "6", "--eval-every", "3",
                      "--eval-samples", "300", "--stats-cache", str(stats_cache),
                      "--termination-log", "", "--checkpoint-dir", str(tmp_path), *extra])
    trial = Trial.create(cfg, log=lambda _msg: None)
    assert next(trial.gan.G.parameters()).is_cuda
    r = trial.run()
    assert r["steps"] == 6 and r["fid"] > 0
    resumed = Trial.create(cfg, log=lambda _msg: None)
    assert resumed.restore() and resumed.run()["fid"] == r["fid"]


def test_imagefolder_with_inception_weights_from_a_file(tmp_path, stats_cache) -> None:
    from PIL import Image

    from critbatch_trainer.inception import FidInceptionV3

    root = tmp_path / "images"
    rng = torch.Generator().manual_seed(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            pixels = (torch.rand(40, 48, 3, generator=rng) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    weights = tmp_path / "inception.pth"
    torch.manual_seed(0)
    torch.save(FidInceptionV3().state_dict(), weights)
    cfg = parse_args(["--dataset", "imagefolder", "--data-path", str(root), "--image-size", "16",
                      "--width", "4", "--batch-size", "4", "--fid-threshold", "0.001",
                      "--max-steps", "2", "--eval-samples", "2", "--real-samples", "2",
                      "--workers", "0",
                      "--extractor", f"inception:{weights}", "--stats-cache", str(stats_cache),
                      "--termination-log", ""])
    trial = Trial.create(cfg, log=lambda _msg: None)
    assert (trial.data.size, trial.data.num_classes) == (8, 2)
    assert trial.reference.mu.shape == (2048,)
    r = trial.run()
    assert r["steps"] == 2 and r["dataset_size"] == 8 and r["fid"] >= 0


def test_unreadable_dataset_exits_2_naming_data_path(tmp_path, capsys) -> None:
    from critbatch_trainer.__main__ import main

    code = main(["--dataset", "imagefolder", "--data-path", str(tmp_path), "--batch-size", "4",
                 "--fid-threshold", "1", "--max-steps", "1", "--extractor", "inception:x.pth",
                 "--termination-log", ""])
    assert code == 2
    assert capsys.readouterr().err.strip().startswith("critbatch-trainer: error: data-path:")
