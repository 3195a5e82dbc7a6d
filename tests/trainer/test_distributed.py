"""Data-parallel trials: W gloo workers under PyTorch's launcher train like one process at the
same global batch, report once, and stop, fail and resume as one trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from trainer_helpers import trainer_cmd

from critbatch.launch import launch_command
from critbatch_trainer import launcher
from critbatch_trainer.data import TrainingData, _StreamSampler, stream_indices
from critbatch_trainer.distributed import Shard, World
from critbatch_trainer.loop import check_world
from critbatch_trainer.settings import ConfigError, TrainerConfig

HERE = Path(__file__).parent
# The digits demo's settings (examples/digits-local.yaml) at b = 16, where N(b) is about 200.
DIGITS = ["--dataset", "digits", "--image-size", "16", "--channels", "1", "--device", "cpu",
          "--lr-g", "1e-3", "--lr-d", "1e-3", "--fid-threshold", "200", "--eval-every", "20",
          "--eval-samples", "500", "--seed", "0"]
# In float64 two workers match one to ~1e-13 over 60 steps on an AMD EPYC; 1e-9 leaves room for
# other CPUs' kernels while any arithmetic mistake (a missed average, a shard's statistics,
# a shifted random stream) shows at 1e-3 or more from the first step.
FLOAT64_TOLERANCE = 1e-9


def launched(program: list[str], workers: int) -> list[str]:
    return launch_command(program, python=sys.executable, processes=workers)


def run(cmd: list[str], timeout: float = 240, **kw: object) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)


# -- the data order --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(n=st.integers(3, 60), per_rank=st.integers(1, 6), world=st.sampled_from([1, 2, 3, 4]),
       start_batch=st.integers(0, 30))
def test_the_shards_of_a_global_batch_are_its_rows_in_order(n: int, per_rank: int, world: int,
                                                           start_batch: int) -> None:
    b = per_rank * world
    batches = 5
    stream = stream_indices(7, n, start_batch * b, batches * b).view(batches, b)
    parts = []
    for rank in range(world):
        sampler = iter(_StreamSampler(7, n, start_batch * b, World(rank, world).shard(b)))
        parts.append(torch.tensor([next(sampler) for _ in range(batches * per_rank)]
                                  ).view(batches, per_rank))
    assert torch.equal(torch.cat(parts, dim=1), stream)


def test_each_worker_gets_its_rows_of_the_embedded_batches() -> None:
    data = TrainingData("digits", image_size=16, channels=1)
    cpu = torch.device("cpu")
    start = data.size // 8 - 1  # the next batches cross an epoch boundary
    whole = data.batches(3, 8, start, cpu)
    ranks = [data.batches(3, 8, start, cpu, shard=World(r, 4).shard(8)) for r in range(4)]
    for _ in range(3):
        x, y = next(whole)
        parts = [next(r) for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)


def test_a_shard_of_the_whole_batch_is_the_batch() -> None:
    t = torch.arange(6)
    assert Shard(0, 6, 6).take(t) is t
    assert torch.equal(Shard(2, 4, 6).take(t), torch.tensor([2, 3]))


# -- the settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(("cfg", "message"), [
    (TrainerConfig(batch_size=6, fid_threshold=1, max_steps=1),
     "batch-size: 6 is not divisible by the 4 worker processes (WORLD_SIZE)"),
    (TrainerConfig(batch_size=8, fid_threshold=1, max_steps=1, cuda_graph=True),
     "cuda-graph: not with 4 worker processes"),
    (TrainerConfig(batch_size=8, fid_threshold=1, max_steps=1, micro_batch=2),
     "micro-batch: not with 4 worker processes"),
    (TrainerConfig(batch_size=8, fid_threshold=1, max_steps=1, recompute_activations=True),
     "recompute-activations: not with 4 worker processes"),
])
def test_settings_a_worker_cannot_split_are_refused(cfg: TrainerConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_world(cfg, World(0, 4))
    check_world(cfg, World())


@pytest.mark.parametrize(("env", "message"), [
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK 2 / WORLD_SIZE 2"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK: must be an integer, got 'x'"),
])
def test_the_launchers_variables_are_checked(monkeypatch: pytest.MonkeyPatch,
                                             env: dict[str, str], message: str) -> None:
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=message):
        World.from_env()


@pytest.mark.parametrize(("codes", "exit"), [
    ([2, -15], 2), ([-9, 1], 1), ([-9, -15], 1), ([143, 143], 143), ([-15, -15], 1), ([1], 1)])
def test_the_launcher_exits_as_its_workers_did(codes: list[int], exit: int) -> None:
    """A bad configuration stays one (a Job does not retry it), a stop by SIGTERM stays one."""
    assert launcher.exit_code(codes) == exit


def test_a_worker_refuses_a_batch_it_cannot_split_and_names_it(stats_cache: Path) -> None:
    out = run(launched(trainer_cmd(*DIGITS, "--batch-size", "7", "--max-steps", "5",
                                   "--stats-cache", str(stats_cache)), 2))
    assert out.returncode == 2  # a bad configuration, as from one process
    assert "batch-size: 7 is not divisible by the 2 worker processes" in out.stderr


# -- training ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_workers_take_the_steps_one_process_takes(tmp_path: Path, stats_cache: Path) -> None:
    """Same data, same noise, gradients and batch-norm statistics of the global batch: each
    step's losses and gradient norms are one process's to float64 rounding, over 60 steps of
    DCGAN, and over a few of WGAN-GP (the penalty's random interpolation) and BigGAN (class
    labels, conditional batch norm, EMA)."""
    common = ["--batch-size", "8", "--seed", "3", "--fid-threshold", "1", "--lr-g", "1e-3",
              "--lr-d", "1e-3", "--stats-cache", str(stats_cache)]
    small = ["--image-size", "16", "--channels", "1"]
    trials = [
        {"steps": 60, "flags": [*common, "--model", "dcgan", *small, "--max-steps", "60"]},
        {"steps": 20, "flags": [*common, "--model", "wgan-gp", *small, "--max-steps", "20"]},
        {"steps": 10, "flags": [*common, "--model", "biggan", "--image-size", "32", "--width",
                                "4", "--ema-start", "5", "--max-steps", "10"]},
    ]
    program = [sys.executable, str(HERE / "dp_trajectory.py")]
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    for out, workers in ((one, 1), (two, 2)):
        done = run(launched([*program, str(out), json.dumps(trials)], workers))
        assert done.returncode == 0, done.stderr[-3000:]
    for trial, a, b in zip(trials, json.loads(one.read_text()), json.loads(two.read_text()),
                           strict=True):
        model = trial["flags"][trial["flags"].index("--model") + 1]
        assert len(a) == len(b) == trial["steps"], model
        for step, (x, y) in enumerate(zip(a, b, strict=True), 1):
            for k in x:
                assert y[k] == pytest.approx(x[k], rel=FLOAT64_TOLERANCE, abs=1e-12), (
                    model, step, k)


def _worker_pid(launcher: subprocess.Popen[str], rank: int) -> int | None:
    """The pid of the launcher's worker of `rank` (Linux: its environment names it)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == launcher.pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def _wait_for(path: Path, text: str, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert proc.poll() is None, path.read_text()[-3000:]
        assert time.monotonic() < deadline, path.read_text()[-3000:]
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds workers in /proc")
def test_a_stopped_or_killed_worker_ends_the_trial_which_resumes_from_its_checkpoint(
        tmp_path: Path, stats_cache: Path) -> None:
    """Stopped by SIGTERM, then a worker killed, then run to the end: the trial resumes each
    time from rank 0's checkpoint, and its N(b) is near one process's (in float32 the two
    agree to ~1e-6 for a few dozen steps, then GAN training's sensitivity amplifies the
    different order of sums, as a different seed would)."""
    ckpt = tmp_path / "ckpt"
    flags = [*DIGITS, "--batch-size", "16", "--max-steps", "600", "--checkpoint-dir",
             str(ckpt), "--checkpoint-every", "20", "--stats-cache", str(stats_cache)]
    cmd = launched(trainer_cmd(*flags), 2)
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def start(name: str) -> tuple[subprocess.Popen[str], Path]:
        log = tmp_path / f"{name}.log"
        with log.open("w") as err:
            return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                    env=env, start_new_session=True), log

    # SIGTERM (a pod's eviction, Ctrl-C in the runner): every worker stops at the same step and
    # rank 0 alone checkpoints and says so.
    proc, log = start("stopped")
    _wait_for(log, "step 40 fid", proc)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    stopped = log.read_text()
    assert stopped.count("stopped by signal at step") == 1, stopped[-3000:]
    step = int(stopped.split("stopped by signal at step ")[1].split(";")[0])
    assert step >= 40 and (ckpt / "checkpoint.pt").is_file()

    # A worker killed: the trial fails, and the launcher's report names the rank.
    proc, log = start("killed")
    _wait_for(log, f"step {(step // 20 + 2) * 20} fid", proc)
    assert f"step {step // 20 * 20} fid" not in log.read_text()  # resumed, did not start over
    pid = _worker_pid(proc, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    killed = log.read_text()
    assert proc.returncode == 1
    assert "rank      : 1 (local_rank: 1)" in killed and "SIGKILL" in killed
    assert "rank 0: lost the trial's other workers" in killed

    # Run again: it resumes from the last checkpoint and finishes, reporting once.
    proc, log = start("resumed")
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert "step 20 fid" not in log.read_text()
    lines = out.strip().splitlines()
    assert sum(line.startswith("{") for line in lines) == 1  # rank 0 alone reports
    result = json.loads(lines[-1])
    assert result["reached"] and result["processes"] == 2 and result["steps"] > step
    assert result["sfo"] == result["steps"] * 16  # b is the global batch
    alone = run(trainer_cmd(*DIGITS, "--batch-size", "16", "--max-steps", "600",
                            "--stats-cache", str(stats_cache)))
    assert alone.returncode == 0, alone.stderr[-3000:]
    one = json.loads(alone.stdout.strip().splitlines()[-1])
    assert one["reached"] and one["processes"] == 1
    # Within two evaluations (40 steps): measured gaps of 0 to 40 steps over b = 8, 16, 32 and
    # two seeds (docs/distributed.md); one process's two seeds differ by up to 60 at b = 8.
    assert abs(one["steps"] - result["steps"]) <= 40
