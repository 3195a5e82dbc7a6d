"""End to end with the real trainer: `critbatch run` against a real Prometheus, and kill -9.

Tiny settings (DCGAN on the embedded digits, a loose FID threshold, a few hundred steps), so
each trial takes seconds. The Prometheus server is Debian's package, started on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from local_helpers import local_manifest, require_prometheus, run_events, wait_until

from critbatch.local.prometheus import PrometheusServer
from critbatch.metrics import PrometheusClient

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

# Crosses FID 500 after roughly 150-200 steps at these batch sizes, a few seconds per trial.
SPEC = {
    "optimizer": {"name": "adam", "generator": {"learningRate": 5e-4},
                  "discriminator": {"learningRate": 5e-4}},
    "target": {"fidThreshold": 500, "evalEvery": 20, "evalSamples": 250, "maxSteps": 400},
    "parallelism": 2,
    "pruning": {"sfoBound": False},
}


def critbatch_run(manifest: dict, out: Path, *args: str, timeout: float = 240,
                  on_event=None) -> tuple[int, list[dict]]:
    """`critbatch run --json` as a subprocess; its JSON lines, each passed to on_event."""
    sweep = out.parent / f"{out.name}.yaml"
    sweep.write_text(yaml.safe_dump(manifest))
    cmd = [sys.executable, "-m", "critbatch", "run", str(sweep), "-o", str(out), "--json",
           *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records = []
    try:
        for line in proc.stdout:
            records.append(json.loads(line))
            if on_event is not None:
                on_event(records[-1])
        proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
        stderr = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == 0, stderr[-3000:]
    return proc.returncode, records


def results(out: Path) -> dict[int, dict]:
    found = {}
    for path in sorted((out / "trials").glob("*/result.json")):
        data = json.loads(path.read_text())
        found[data["batch_size"]] = data
    return found


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"),
                              binary=require_prometheus(), scrape_interval=1.0)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prometheus_run(prometheus, tmp_path_factory):
    """One sweep of three batch sizes whose metrics go through the Prometheus server."""
    out = tmp_path_factory.mktemp("e2e") / "run"
    manifest = local_manifest("e2e-prom", batchSizes=[16, 32, 64], **SPEC)
    critbatch_run(manifest, out, "--prometheus", prometheus.url,
                  "--sd-file", str(prometheus.targets_file))
    return out, yaml.safe_load((out / "status.yaml").read_text())


def test_n_b_read_through_promql_equals_the_trainers_own_results(prometheus, prometheus_run):
    out, status = prometheus_run
    own = results(out)
    assert sorted(own) == [16, 32, 64]
    assert sum(r["reached"] for r in own.values()) >= 2, own
    client = PrometheusClient(prometheus.url)
    sel = '{sweep="e2e-prom"}'
    reached = {int(labels["batch_size"]): value for labels, value in client.query(
        f"max by (batch_size) (max_over_time(critbatch_trainer_steps_to_threshold{sel}[1h]))")}
    steps = {int(labels["batch_size"]): value for labels, value in client.query(
        f"max by (batch_size) (max_over_time(critbatch_trainer_step{sel}[1h]))")}
    finished = {int(labels["batch_size"]): value for labels, value in client.query(
        f"max by (batch_size) (max_over_time(critbatch_trainer_finished{sel}[1h]))")}
    for b, result in own.items():
        assert finished[b] == 1
        if result["reached"]:
            assert reached[b] == result["steps"]
        else:
            assert b not in reached and steps[b] == result["steps"]
    trials = {t["batchSize"]: t for t in status["trials"]}
    for b, result in own.items():
        assert trials[b]["steps"] == result["steps"]
        assert trials[b]["phase"] == ("Reached" if result["reached"] else "Censored")
        assert trials[b]["source"] == "prometheus"
    assert status["phase"] == "Succeeded"
    assert status["criticalBatchSize"]["measured"] in (16, 32, 64)
    assert (out / "critbatch.png").exists() and (out / "summary.md").exists()


def test_kill_9_of_a_trainer_restarts_it_from_its_checkpoint_with_n_unaffected(
        tmp_path, prometheus_run):
    reference = results(prometheus_run[0])
    out = tmp_path / "run"
    victim = 16
    ckpt = out / "trials" / f"b{victim}-s0" / "checkpoint" / "checkpoint.pt"
    killed = []

    def kill_first_start(record):
        first = record["event"] == "start" and record.get("batch_size") == victim
        if first and not killed and wait_until(ckpt.exists, timeout=60, every=0.02):
            os.kill(record["pid"], signal.SIGKILL)
            killed.append(record["pid"])

    manifest = local_manifest("e2e-kill", batchSizes=[victim, 32], **SPEC)
    _, records = critbatch_run(manifest, out, on_event=kill_first_start)
    assert killed, "the trainer was never killed"
    events = [r["event"] for r in records if r.get("batch_size") == victim]
    assert events[:3] == ["start", "trainer-exit", "restart"]
    status = yaml.safe_load((out / "status.yaml").read_text())
    trial = next(t for t in status["trials"] if t["batchSize"] == victim)
    assert trial["restarts"] == 1
    assert trial["phase"] == ("Reached" if reference[victim]["reached"] else "Censored")
    assert trial["steps"] == reference[victim]["steps"]
    assert results(out)[victim]["steps"] == reference[victim]["steps"]
    log = (out / "trials" / f"b{victim}-s0" / "trainer.log").read_text()
    assert log.count(" start: ") == 2
    after_restart = log.split(" start: ")[2].splitlines()
    first_step = next(int(ln.split()[1]) for ln in after_restart if ln.startswith("step "))
    assert first_step > SPEC["target"]["evalEvery"]  # resumed from the checkpoint, not step 0


def test_the_trials_are_forked_warm_and_start_cold_once_the_server_is_gone(
        tmp_path, prometheus_run):
    """The prometheus run above started its trials warm; here the server is killed as soon
    as it is ready, and the sweep still ends with the same N(b), its trials started cold."""
    assert "warm" in [e["event"] for e in run_events(prometheus_run[0])]
    reference = results(prometheus_run[0])
    killed = []

    def kill_server(record):
        if record["event"] == "warm" and not killed:
            os.kill(record["pid"], signal.SIGKILL)
            killed.append(record["pid"])

    out = tmp_path / "run"
    manifest = local_manifest("e2e-warm", batchSizes=[32], **{**SPEC, "parallelism": 1})
    critbatch_run(manifest, out, on_event=kill_server)
    assert killed
    status = yaml.safe_load((out / "status.yaml").read_text())
    assert status["phase"] == "Succeeded"
    assert any("warm starts: the server ended" in w for w in status.get("warnings", [])), status
    for trial in status["trials"]:
        assert trial["steps"] == reference[trial["batchSize"]]["steps"]
        assert trial.get("restarts", 0) <= 1  # a trial asked of the dying server starts again
    _, again = critbatch_run(manifest, out, "--resume")  # nothing left to run
    started = [r for r in again if r["event"] == "start" and "batch_size" in r]
    assert not started and "warm" not in [r["event"] for r in again]  # nor a warm server


def test_an_adaptive_sweep_runs_the_trials_it_chooses_within_its_cap(tmp_path):
    out = tmp_path / "run"
    manifest = local_manifest("e2e-adaptive", batchSizes=[8, 16, 32, 64], seeds=2,
                              strategy={"type": "adaptive", "maxTrials": 5}, **SPEC)
    _, records = critbatch_run(manifest, out)
    status = yaml.safe_load((out / "status.yaml").read_text())
    trials = status["trials"]
    keys = [(t["batchSize"], t["seed"]) for t in trials]
    assert 3 <= len(trials) <= 5 and len(set(keys)) == len(keys)
    assert {(8, 0), (32, 0), (64, 0)} <= set(keys)  # the initial design
    assert all(t["selectedBecause"] and t["phase"] in ("Reached", "Censored") for t in trials)
    assert len(list((out / "trials").glob("*/result.json"))) == len(trials)
    assert sum(r["event"] == "start" and "batch_size" in r for r in records) == len(trials)
    cbs = status["criticalBatchSize"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert status["phase"] == "Succeeded" and cbs["mostProbable"] in (8, 16, 32, 64)
    assert ready["reason"] == ("Resolved" if cbs["resolved"] else "Unresolved")
    assert status["trialsMax"] == 5


def test_a_data_parallel_sweep_runs_the_real_trainer_as_two_workers(tmp_path):
    """`spec.trainer.processes: 2` on the CPU: each trial is the launcher's two gloo workers
    sharing the global batch, and to the sweep it is one trial with rank 0's one result."""
    out = tmp_path / "run"
    manifest = local_manifest("e2e-dp", batchSizes=[16], seeds=1, **SPEC,
                              trainer={"processes": 2, "gpus": 0, "device": "cpu"})
    _, records = critbatch_run(manifest, out)
    status = yaml.safe_load((out / "status.yaml").read_text())
    [trial] = status["trials"]
    result = results(out)[16]
    assert trial["phase"] == "Reached" and trial["steps"] == result["steps"]
    assert result["processes"] == 2 and result["sfo"] == 16 * result["steps"]
    [start] = [r for r in records if r["event"] == "start" and "batch_size" in r]
    assert start["workers"] == 2
    log = (out / "trials" / "b16-s0" / "trainer.log").read_text()
    assert "critbatch_trainer.launcher" in log and log.count('"batch_size":16') == 1
