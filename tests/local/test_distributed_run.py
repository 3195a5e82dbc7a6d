"""Data-parallel trials on this machine: a sweep whose trainer has world size W > 1 runs each
trial as W worker processes under PyTorch's launcher, and to the runner such a trial is one
process: its result is rank 0's, Ctrl-C stops it at its checkpoint, a killed rank fails it
with the rank named, and it is retried and resumed from its checkpoint.

The launcher's tests run trainers/data_parallel.py, the fake trainer's N(b) as two gloo
workers (a torch import each: seconds), so each test starts as few trials as it can.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from fake_trainer import expected_steps
from local_helpers import HERE, alive, local_manifest, run_events, wait_until

from critbatch.launch import LAUNCHER_MODULE
from critbatch.local import supervise
from critbatch.local.launched import launched, nodes_note, workers
from critbatch.local.options import RunOptions
from critbatch.local.processes import THREAD_VARIABLES, Supervisor, log_attempt
from critbatch.local.runner import LocalRun
from critbatch.spec import parse_sweep
from critbatch_trainer import launcher

DP_TRAINER = [sys.executable, str(HERE / "trainers" / "data_parallel.py")]
A, B = 100.0, 8.0  # the fake model's constants: N(16) = 200 steps at evalEvery 50
STEPS = expected_steps(16, 50, A, B)
KILLED = "rank 1 (local rank 1) was killed by SIGKILL (exitcode -9)"


@pytest.fixture
def fast_dp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_A", str(A))
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.002")


def dp_manifest(**trainer) -> dict:
    """One trial (b=16, seed 0) of two worker processes on the CPU."""
    return local_manifest(batchSizes=[16], parallelism=1,
                          trainer={"processes": 2, **trainer})


def run(manifest: dict, out: Path, **options) -> LocalRun:
    runner = LocalRun(manifest, RunOptions(out_dir=out, trainer_command=DP_TRAINER,
                                           poll_interval=0.05, scrape_interval=0.2, **options))
    runner.run()
    return runner


def worker_pids(log: Path) -> list[int]:
    """The pids the data-parallel fake's workers printed (`worker RANK pid PID`) since the
    trial's last start (the runner appends a `# TIME start: ...` line per attempt)."""
    text = log.read_text() if log.exists() else ""
    attempt = re.split(r"^# \S+ start: .*$", text, flags=re.MULTILINE)[-1]
    return [int(p) for p in re.findall(r"^worker \d+ pid (\d+)$", attempt, re.MULTILINE)]


def trial_dir(out: Path) -> Path:
    return out / "trials" / "b16-s0"


# -- how a trial of W workers starts -----------------------------------------------------------


def test_a_trial_of_several_workers_is_the_launchers_and_shares_the_threads():
    program = [sys.executable, "-m", "critbatch_trainer", "--batch-size", "16"]
    one = launched(program, workers=1, threads=4)
    assert (one.argv, one.env, one.death_signal) == (program, {}, signal.SIGKILL)
    two = launched(program, workers=2, threads=4)
    assert two.argv == [sys.executable, "-m", LAUNCHER_MODULE, "--nnodes=1",
                        "--nproc-per-node=2", "--max-restarts=0", "--standalone",
                        "--no-python", *program]
    assert two.env == dict.fromkeys(THREAD_VARIABLES, "2")  # CRITBATCH_THREADS stays 4
    assert two.death_signal == signal.SIGTERM  # a dying runner: the workers checkpoint
    assert launched(program, workers=8, threads=2).env["OMP_NUM_THREADS"] == "1"


def test_a_sweep_for_several_nodes_runs_all_its_workers_here_and_says_so():
    sweep = parse_sweep(local_manifest(batchSizes=[16], trainer={"nodes": 2, "processes": 4}))
    assert workers(sweep) == 8
    assert nodes_note(sweep) == ("spec.trainer.nodes: 2 nodes x 4 processes run here as 8 "
                                 "worker processes of one trial on this machine")
    one_node = parse_sweep(dp_manifest())
    assert (workers(one_node), nodes_note(one_node)) == (2, None)


def test_a_custom_trainer_is_one_process_whatever_its_gpus():
    sweep = parse_sweep(local_manifest(batchSizes=[16]))
    custom = replace(sweep, trainer=replace(sweep.trainer, command=("./train",), gpus=4))
    assert workers(custom) == 1 and nodes_note(custom) is None


def test_the_launchers_report_is_read_from_the_latest_attempt_only(tmp_path):
    log = tmp_path / "trainer.log"
    log.write_text("# 2026-01-01T00:00:00+0000 start: a\nRoot Cause (first observed failure):\n"
                   "# not a start line\n# 2026-01-01T00:01:00+0000 start: b\nresumed\n")
    assert log_attempt(log) == "# 2026-01-01T00:01:00+0000 start: b\nresumed\n"
    assert log_attempt(tmp_path / "missing.log") == ""


LAUNCHER_STANDIN = r'''
import subprocess, sys, time
# Like the launcher: each worker in a session of its own; none of them minds SIGTERM.
import signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)
code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
for _ in range(2):
    w = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    print(f"worker 0 pid {w.pid}", flush=True)
time.sleep(600)
'''


def test_killing_a_trial_kills_the_workers_in_their_own_sessions(tmp_path):
    """A SIGKILL to the launcher's process group would leave its workers running."""
    log = tmp_path / "trainer.log"
    with Supervisor(threads=1) as procs:
        proc = procs.start("t", [sys.executable, "-c", LAUNCHER_STANDIN], log)
        assert wait_until(lambda: len(worker_pids(log)) == 2)
        pids = [proc.pid, *worker_pids(log)]
        assert all(os.getpgid(p) == p for p in pids)  # three process groups
        ended = procs.stop_all(grace=0.5)  # SIGTERM is ignored: then SIGKILL, all of them
    assert [code for _, code in ended] == [-signal.SIGKILL]
    assert wait_until(lambda: not any(alive(p) for p in pids), timeout=5)


# -- through the launcher ----------------------------------------------------------------------


@pytest.mark.usefixtures("fast_dp")
def test_a_data_parallel_sweep_runs_each_trial_through_the_launcher(tmp_path):
    out = tmp_path / "o"
    status = run(dp_manifest(), out).status
    [trial] = status["trials"]
    assert (trial["phase"], trial["steps"], trial["restarts"]) == ("Reached", STEPS, 0)
    assert trial["source"] == "direct"  # rank 0's metrics saw the result the file holds
    events = run_events(out)
    [started] = [e for e in events if e["event"] == "run"]
    assert (started["workers"], started["launcher"]) == (2, LAUNCHER_MODULE)
    [start] = [e for e in events if e["event"] == "start"]
    assert start["workers"] == 2
    log = trial_dir(out) / "trainer.log"
    first = log.read_text().splitlines()[0]
    assert f"start: {sys.executable} -m {LAUNCHER_MODULE} --nnodes=1 --nproc-per-node=2 " \
           "--max-restarts=0 --standalone --no-python " in first
    pids = worker_pids(log)
    assert len(pids) == 2 and not any(alive(p) for p in pids)
    assert not any(e["event"] == "warning" for e in events)


@pytest.mark.usefixtures("fast_dp")
def test_a_killed_rank_is_named_and_the_trial_retried_from_its_checkpoint(tmp_path, monkeypatch):
    """Rank 1 kills itself at step 120 on the first attempt; the launcher stops rank 0, which
    checkpoints there; the retry (spec.trainer.backoffLimit) resumes at step 120."""
    monkeypatch.setenv("DP_KILL_RANK", "1")
    monkeypatch.setenv("DP_KILL_AT", "120")
    out = tmp_path / "o"
    [trial] = run(dp_manifest(backoffLimit=1), out).status["trials"]
    assert (trial["phase"], trial["steps"], trial["restarts"]) == ("Reached", STEPS, 1)
    [retried] = [e for e in run_events(out) if e["event"] == "trainer-exit"]
    assert (retried["code"], retried["exit"], retried["reason"]) == (1, "crashed", KILLED)
    assert "resumed from step 120" in log_attempt(trial_dir(out) / "trainer.log")


# The launcher's last words when rank 1 fails first (critbatch.launch parses the whole report;
# tests/core/test_launch.py has it as the launcher writes it).
REPORT = """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
Root Cause (first observed failure):
[0]:
  time      : 2026-11-30_10:46:32
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : {code} (pid: 16651)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
"""


def standin_launcher(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """Trials of the sweep run a stand-in for the launcher: it prints the launcher's report of
    rank 1 ending with `code`, and exits as critbatch_trainer.launcher does."""
    script = (f"import sys; print({REPORT.format(code=code)!r}); "
              f"sys.exit({launcher.exit_code([code])})")

    def standin(program, *, workers, threads):
        real = launched(program, workers=workers, threads=threads)
        return replace(real, argv=[sys.executable, "-c", script])

    monkeypatch.setattr(supervise, "launched", standin)


def test_a_failed_worker_fails_the_trial_naming_its_rank_and_code(tmp_path, monkeypatch):
    standin_launcher(monkeypatch, -9)
    [trial] = run(dp_manifest(backoffLimit=0), tmp_path / "o").status["trials"]
    assert trial["phase"] == "Failed"
    assert trial["reason"] == f"exit 1 (crashed): {KILLED}"


def test_a_worker_that_exits_2_is_a_bad_configuration_never_retried(tmp_path, monkeypatch):
    standin_launcher(monkeypatch, 2)
    out = tmp_path / "o"
    [trial] = run(dp_manifest(backoffLimit=2), out).status["trials"]
    assert (trial["phase"], trial["restarts"]) == ("Failed", 0)
    assert trial["reason"] == "exit 2 (bad-config): rank 1 (local rank 1) exited with code 2"
    assert not any(e["event"] == "trainer-exit" for e in run_events(out))


def _start_cli(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """`critbatch run --json` of the one-trial sweep, its trial slow (about 20 s)."""
    out = tmp_path / "o"
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump(dp_manifest()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "critbatch", "run", str(sweep), "-o", str(out), "--json",
         "--trainer", " ".join(DP_TRAINER)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, FAKE_A="1000", FAKE_STEP_SECONDS="0.01"))
    return proc, out


def _training(out: Path) -> list[int]:
    """The launcher's and its workers' pids, once rank 0 wrote a checkpoint (step 50); of the
    last attempt, should the runner have restarted the trial (a metrics port taken by another
    process between its choice and the bind, say)."""
    assert wait_until(lambda: (trial_dir(out) / "checkpoint" / "fake.json").exists(),
                      timeout=120)
    log = trial_dir(out) / "trainer.log"
    launcher = [e["pid"] for e in run_events(out) if e["event"] in ("start", "restart")][-1]
    return [launcher, *worker_pids(log)]


def _kill_left(pids: list[int]) -> None:
    """A failed test leaves no worker training."""
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def _checkpoint(out: Path) -> dict:
    return json.loads((trial_dir(out) / "checkpoint" / "fake.json").read_text())


def test_ctrl_c_stops_every_worker_at_its_checkpoint(tmp_path):
    proc, out = _start_cli(tmp_path)
    pids: list[int] = []
    try:
        pids += _training(out)
        assert len(pids) == 3
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        _kill_left(pids)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert not any(alive(p) for p in pids)
    status = yaml.safe_load((out / "status.yaml").read_text())
    assert status["warnings"][0].startswith("Interrupted (Ctrl-C): unfinished trials stopped "
                                            "at their checkpoints")
    [trial] = status["trials"]
    assert trial["phase"] in ("Running", "Pending") and not trial.get("reason")
    # Rank 0 saved where the workers stopped (at step 50 at the earliest: the signal may
    # come before the next step).
    assert _checkpoint(out)["stopped"] and _checkpoint(out)["step"] >= 50
    assert not any(e["event"] in ("failed", "trainer-exit") for e in run_events(out))


def test_a_killed_runner_leaves_no_worker_behind(tmp_path):
    """kill -9 of the runner: the launcher gets SIGTERM (its parent-death signal) and stops
    its workers, which checkpoint; a SIGKILL would have left them training."""
    proc, out = _start_cli(tmp_path)
    pids: list[int] = []
    try:
        pids += _training(out)
        assert len(pids) == 3
        proc.kill()
        proc.wait(timeout=10)
        assert wait_until(lambda: not any(alive(p) for p in pids), timeout=30)
    finally:
        proc.kill()
        _kill_left(pids)
    assert _checkpoint(out)["stopped"] and _checkpoint(out)["step"] >= 50
