"""The local runner's loop, against a FAKE trainer that keeps the trainer's contract.

Fast and exact: the fake's N(b) is known in advance (fake_trainer.expected_steps). The same
behaviours against the real trainer are in test_e2e.py.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest
import yaml
from fake_trainer import expected_steps
from local_helpers import FAKE_TRAINER, alive, local_manifest, run_events, wait_until

from critbatch.local import supervise
from critbatch.local.options import RunError, RunOptions
from critbatch.local.progress import Progress
from critbatch.local.runner import LocalRun

A, B = 1000.0, 8.0  # the fake's defaults: N(b) = 1000 b / (b - 8), b* = 2B/K = 16

pytestmark = pytest.mark.usefixtures("fast_fake")


def run_sweep(manifest: dict, out: Path, progress: Progress | None = None, **options) -> LocalRun:
    options = {"trainer_command": FAKE_TRAINER, "poll_interval": 0.1, "scrape_interval": 0.3,
               **options}
    opts = RunOptions(out_dir=out, **options)
    runner = LocalRun(manifest, opts, progress)
    runner.run()
    return runner


def trials_by_batch(status: dict) -> dict[int, dict]:
    return {t["batchSize"]: t for t in status["trials"]}


def test_a_trainer_that_wrote_its_result_is_scraped_and_stopped_at_once(tmp_path):
    """A finished trainer lingers until its final metrics are read: the runner reads them as
    soon as the result file appears, not at its next scrape (an hour away here), so the
    lingering trainer is stopped at once and its N(b) is confirmed by the metrics."""
    out = tmp_path / "run"
    run_sweep(local_manifest(batchSizes=[16, 32]), out, scrape_interval=3600.0, linger=3600.0)
    status = yaml.safe_load((out / "status.yaml").read_text())
    for t in status["trials"]:
        assert t["phase"] == "Reached" and t["source"] == "direct", t


def test_a_sweep_runs_to_the_end_with_the_trainers_own_results(tmp_path):
    out = tmp_path / "run"
    manifest = local_manifest(batchSizes=[8, 16, 32, 64])
    runner = run_sweep(manifest, out)
    status = yaml.safe_load((out / "status.yaml").read_text())
    assert status == runner.status
    assert status["phase"] == "Succeeded"
    trials = trials_by_batch(status)
    assert trials[8]["phase"] == "Censored" and trials[8]["steps"] == 3000
    for b in (16, 32, 64):
        assert trials[b]["phase"] == "Reached"
        assert trials[b]["steps"] == expected_steps(b, 50, A, B)
        assert trials[b]["sfo"] == b * trials[b]["steps"]
        assert trials[b]["source"] == "direct"  # the scrape saw the same final N(b)
        result = json.loads((out / "trials" / f"b{b}-s0" / "result.json").read_text())
        assert result["steps"] == trials[b]["steps"]
    cbs = status["criticalBatchSize"]
    assert cbs["measured"] == 16
    assert 10 < cbs["fitted"] < 26  # the model's b* is 16; N is rounded up to evaluations
    for name in ("critbatch.png", "critbatch.svg", "summary.md", "sweep.yaml"):
        assert (out / name).stat().st_size > 0
    assert yaml.safe_load((out / "sweep.yaml").read_text())["status"] == status
    starts = [e for e in run_events(out) if e["event"] == "start"]
    assert len(starts) == 4


def test_parallelism_is_respected(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.002")
    seen: list[int] = []

    class Count(Progress):
        def update(self, status, trials, elapsed):
            seen.append(sum(t.phase == "Running" for t in trials))

    run_sweep(local_manifest(batchSizes=[16, 32, 64, 128], parallelism=2), tmp_path / "r",
              Count())
    assert max(seen) == 2


def test_sfo_pruning_stops_trials_that_cannot_win(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.001")  # still running when the bound stops them
    out = tmp_path / "run"
    manifest = local_manifest(batchSizes=[16, 32, 64], parallelism=1,
                              pruning={"sfoBound": True})
    runner = run_sweep(manifest, out)
    trials = trials_by_batch(runner.status)
    assert trials[16]["phase"] == "Reached"
    best = 16 * expected_steps(16, 50, A, B)
    for b in (32, 64):
        assert trials[b]["phase"] == "Pruned"
        assert b * trials[b]["steps"] >= best
        assert trials[b]["steps"] < expected_steps(b, 50, A, B)  # stopped before reaching
        assert not (out / "trials" / f"b{b}-s0" / "result.json").exists()
    assert runner.status["sfoSaved"] > 0
    assert runner.status["criticalBatchSize"]["measured"] == 16


def test_a_kill_9_restarts_the_trial_from_its_checkpoint_and_n_is_unaffected(tmp_path,
                                                                               monkeypatch):
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.003")
    out = tmp_path / "run"
    killed: list[int] = []

    def killer():
        log = out / "trials" / "b32-s0" / "trainer.log"
        ckpt = out / "trials" / "b32-s0" / "checkpoint" / "fake.json"
        if wait_until(ckpt.exists, timeout=30) and log.exists():
            start = next(e for e in run_events(out) if e["event"] == "start"
                         and e["batch_size"] == 32)
            os.kill(start["pid"], signal.SIGKILL)
            killed.append(start["pid"])

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    runner = run_sweep(local_manifest(batchSizes=[16, 32]), out)
    thread.join()
    assert killed, "the trial was never killed"
    trial = trials_by_batch(runner.status)[32]
    assert trial["phase"] == "Reached"
    assert trial["steps"] == expected_steps(32, 50, A, B)
    assert trial["restarts"] == 1
    log = (out / "trials" / "b32-s0" / "trainer.log").read_text()
    assert "resumed from step" in log
    assert [e["event"] for e in run_events(out) if e.get("batch_size") == 32][:3] == [
        "start", "trainer-exit", "restart"]


def test_a_trial_killed_more_often_than_backoff_limit_fails(tmp_path):
    out = tmp_path / "run"
    manifest = local_manifest(batchSizes=[16], trainer={"backoffLimit": 1})
    opts = RunOptions(out_dir=out, trainer_command=["sh", "-c", "kill -9 $$", "trainer"],
                      poll_interval=0.05)
    runner = LocalRun(manifest, opts)
    runner.run()
    trial = trials_by_batch(runner.status)[16]
    assert trial["phase"] == "Failed"
    assert trial["restarts"] == 1
    assert "killed" in trial["reason"]
    assert runner.status["phase"] == "Failed"


def test_bad_trainer_configuration_fails_at_once_with_the_trainers_message(tmp_path):
    out = tmp_path / "run"
    cmd = ["sh", "-c", "echo 'critbatch-trainer: error: lr-g: must be > 0' >&2; exit 2", "t"]
    runner = LocalRun(local_manifest(batchSizes=[16]),
                      RunOptions(out_dir=out, trainer_command=cmd, poll_interval=0.05))
    runner.run()
    trial = trials_by_batch(runner.status)[16]
    assert trial["phase"] == "Failed" and trial["restarts"] == 0
    assert "lr-g: must be > 0" in trial["reason"]


class InterruptAfterFirstFinish(Progress):
    """Presses Ctrl-C (raises KeyboardInterrupt) once one trial is final."""

    def update(self, status, trials, elapsed):
        if any(t.phase in ("Reached", "Censored") for t in trials):
            raise KeyboardInterrupt


def test_ctrl_c_keeps_finished_results_and_resume_does_not_rerun_them(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.002")
    out = tmp_path / "run"
    manifest = local_manifest(batchSizes=[16, 64, 128], parallelism=2)
    first = run_sweep(manifest, out, InterruptAfterFirstFinish())
    assert first.interrupted
    done = {b for b, t in trials_by_batch(first.status).items() if t["phase"] == "Reached"}
    assert done, "no trial finished before the interrupt"
    pids = [e["pid"] for e in run_events(out) if e["event"] == "start"]
    assert not any(alive(p) for p in pids)  # every trial process was stopped
    assert any("--resume" in w for w in first.status["warnings"])
    on_disk = yaml.safe_load((out / "status.yaml").read_text())
    assert {t["batchSize"] for t in on_disk["trials"] if t["phase"] == "Reached"} == done

    with pytest.raises(RunError, match=r"^--out: .* already holds a run"):
        LocalRun(manifest, RunOptions(out_dir=out, trainer_command=FAKE_TRAINER)).prepare()

    n_events = len(run_events(out))
    second = run_sweep(manifest, out, resume=True)
    assert second.status["phase"] == "Succeeded"
    restarted = {e["batch_size"] for e in run_events(out)[n_events:] if e["event"] == "start"}
    assert restarted == {16, 64, 128} - done
    for b, t in trials_by_batch(second.status).items():
        assert t["phase"] == "Reached" and t["steps"] == expected_steps(b, 50, A, B)


def test_resume_refuses_a_changed_target(tmp_path):
    out = tmp_path / "run"
    run_sweep(local_manifest(batchSizes=[16]), out)
    changed = local_manifest(batchSizes=[16])
    changed["spec"]["target"]["fidThreshold"] = 5
    with pytest.raises(RunError, match=r"^spec\.target: differs"):
        LocalRun(changed, RunOptions(out_dir=out, resume=True)).prepare()


def test_metrics_through_a_private_prometheus(tmp_path, monkeypatch, prometheus_binary):
    """--with-prometheus: the final N(b) is confirmed by PromQL (source "prometheus")."""
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.004")  # trials outlive Prometheus' discovery
    out = tmp_path / "run"
    runner = run_sweep(local_manifest(batchSizes=[32, 64]), out, metrics="with-prometheus")
    for b, t in trials_by_batch(runner.status).items():
        assert t["phase"] == "Reached"
        assert t["steps"] == expected_steps(b, 50, A, B)
        assert t["source"] == "prometheus"
    config = yaml.safe_load((out / "prometheus" / "prometheus.yml").read_text())
    assert config["scrape_configs"][0]["file_sd_configs"]
    assert json.loads((out / "prometheus" / "targets" / "trials.json").read_text()) == []
    prom = next(e for e in run_events(out) if e["event"] == "prometheus")
    assert prom["url"].startswith("http://127.0.0.1:")


def _losing_its_port(tmp_path, times: int) -> list[str]:
    """A trainer whose metrics port another process takes on its first `times` starts."""
    count = tmp_path / "starts"
    script = (f'echo x >> {count}; if [ "$(wc -l < {count})" -le {times} ]; then '
              'echo "critbatch-trainer: error: metrics-port: cannot listen" >&2; exit 2; fi; '
              f'exec {" ".join(FAKE_TRAINER)} "$@"')
    return ["sh", "-c", script, "trainer"]


def test_a_metrics_port_taken_at_start_is_retried_on_a_new_port_not_counted(tmp_path):
    """A port taken between the runner's choice and the trainer's bind is this machine's race,
    not the trial's failure: it costs none of spec.trainer.backoffLimit's restarts."""
    out = tmp_path / "run"
    runner = run_sweep(local_manifest(batchSizes=[16], trainer={"backoffLimit": 0}), out,
                       trainer_command=_losing_its_port(tmp_path, 2))
    trial = trials_by_batch(runner.status)[16]
    assert trial["phase"] == "Reached" and trial["restarts"] == 0
    events = [e for e in run_events(out) if e["event"] in ("start", "port-taken")]
    assert [e["event"] for e in events] == ["start", "port-taken"] * 2 + ["start"]
    assert len({e["port"] for e in events if e["event"] == "start"}) == 3


def test_a_port_lost_again_and_again_counts_as_a_restart_at_last(tmp_path):
    runner = run_sweep(local_manifest(batchSizes=[16], trainer={"backoffLimit": 1}),
                       tmp_path / "run", trainer_command=_losing_its_port(tmp_path, 100))
    trial = trials_by_batch(runner.status)[16]
    assert (trial["phase"], trial["restarts"]) == ("Failed", 1)
    assert "metrics-port: cannot listen" in trial["reason"]
    assert len((tmp_path / "starts").read_text().split()) == supervise.PORT_RETRIES + 2
