"""`critbatch run` and `critbatch report` on the command line: wiring, exit codes, messages."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml
from local_helpers import FAKE_TRAINER, alive, local_manifest, wait_until

from critbatch.cli import main


def _write(path, manifest) -> str:
    path.write_text(yaml.safe_dump(manifest))
    return str(path)


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda m: m["spec"].update(batchSizes=[16, -4]), "spec.batchSizes[1]"),
    (lambda m: m["spec"]["target"].pop("maxSteps"), "spec.target.maxSteps"),
    (lambda m: m.update(kind="Job"), "kind"),
])
def test_a_bad_manifest_exits_2_with_one_line_naming_the_field(tmp_path, capsys, mutate, field):
    manifest = local_manifest()
    mutate(manifest)
    code = main(["run", _write(tmp_path / "s.yaml", manifest), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"critbatch: error: {field}:")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("args", "field"), [
    (["--threads", "0"], "--threads"),
    (["--sd-file", "x.json"], "--sd-file"),
    (["--prometheus", "localhost:9090"], "--prometheus"),
    (["--reference-noise-ratio", "-1"], "--reference-noise-ratio"),
    (["--reference-noise-ratio", "nan"], "--reference-noise-ratio"),
])
def test_bad_options_exit_2(tmp_path, capsys, args, field):
    code = main(["run", _write(tmp_path / "s.yaml", local_manifest()), "-o",
                 str(tmp_path / "o"), *args])
    assert code == 2
    assert capsys.readouterr().err.startswith(f"critbatch: error: {field}:")


def test_run_quiet_prints_the_result_line_and_exits_0(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0")
    out = tmp_path / "o"
    code = main(["run", _write(tmp_path / "s.yaml", local_manifest(batchSizes=[16, 32])),
                 "-o", str(out), "--quiet", "--trainer", " ".join(FAKE_TRAINER)])
    captured = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert len(captured) == 1
    assert re.fullmatch(rf"Succeeded, trials 2/2, b\* 16 \(P [0-9.]+, (resolved|unresolved: "
                        rf"[0-9, ]+)\), measured 16, fitted [0-9.]+ \[[0-9., ]+\]; "
                        rf"report: {re.escape(str(out))}/summary.md", captured[0])

    summary = (out / "summary.md").read_text()
    for name in ("summary.md", "critbatch.png", "critbatch.svg"):
        (out / name).unlink()
    assert main(["report", str(out)]) == 0  # a run directory: the report is redone in place
    assert (out / "summary.md").read_text() == summary
    assert (out / "critbatch.png").exists() and (out / "critbatch.svg").exists()


def test_sigint_stops_the_trials_and_resume_finishes_the_sweep(tmp_path):
    """A real Ctrl-C (SIGINT) to `critbatch run`: exit 130, no trainer left, then --resume."""
    out = tmp_path / "o"
    sweep = _write(tmp_path / "s.yaml", local_manifest(batchSizes=[16, 32]))
    cmd = [sys.executable, "-m", "critbatch", "run", sweep, "-o", str(out), "--json",
           "--trainer", " ".join(FAKE_TRAINER)]
    env = dict(os.environ, FAKE_STEP_SECONDS="0.01")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        pids = []
        for line in proc.stdout:
            record = json.loads(line)
            if record["event"] == "start" and "pid" in record:
                pids.append(record["pid"])
            if len(pids) == 2:
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert wait_until(lambda: not any(alive(p) for p in pids), timeout=5)
    done = json.loads(rest.strip().splitlines()[-1])
    assert done["event"] == "done" and done["status"]["phase"] == "Running"
    assert all(t["phase"] in ("Running", "Pending") for t in done["status"]["trials"])

    env["FAKE_STEP_SECONDS"] = "0"
    again = subprocess.run([sys.executable, "-m", "critbatch", "run", "--resume", "-o", str(out),
                            "--quiet", "--trainer", " ".join(FAKE_TRAINER)],
                           capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    for name in ("b16-s0", "b32-s0"):
        assert "resumed from step" in (out / "trials" / name / "trainer.log").read_text()


def _resource_yaml() -> str:
    resource = local_manifest(name="clustered")
    resource["status"] = {
        "phase": "Succeeded", "trialsDone": 2, "trialsTotal": 2,
        "trials": [
            {"batchSize": 16, "seed": 0, "phase": "Reached", "steps": 2000, "sfo": 32000},
            {"batchSize": 32, "seed": 0, "phase": "Reached", "steps": 1350, "sfo": 43200},
        ],
        "criticalBatchSize": {"measured": 16, "fitted": 15.1, "nMin": 1000.0},
    }
    return yaml.safe_dump(resource)


def test_report_reads_kubectl_yaml_on_stdin(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO(_resource_yaml()))
    assert main(["report", "-"]) == 0
    out = tmp_path / "report-clustered"
    assert (out / "critbatch.png").exists() and (out / "critbatch.svg").exists()
    assert "| 32 | 0 | Reached | 1350 | 43200 |" in (out / "summary.md").read_text()
    assert capsys.readouterr().out.startswith("clustered: ")


def test_report_of_a_kubectl_list_renders_each_sweep(tmp_path, monkeypatch):
    one = yaml.safe_load(_resource_yaml())
    two = yaml.safe_load(_resource_yaml())
    two["metadata"]["name"] = "second"
    monkeypatch.setattr(sys, "stdin", io.StringIO(yaml.safe_dump(
        {"apiVersion": "v1", "kind": "List", "items": [one, two]})))
    assert main(["report", "-", "-o", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "clustered" / "summary.md").exists()
    assert (tmp_path / "r" / "second" / "summary.md").exists()


def test_report_without_a_status_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(yaml.safe_dump(local_manifest())))
    assert main(["report", "-", "-o", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("critbatch: error: status:")


def test_report_from_the_cluster_without_the_kubernetes_client_says_how(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # as if the extra is not installed
    assert main(["report", "--name", "digits"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("critbatch: error: --name:") and "critbatch[operator]" in err
    assert err.count("\n") == 1


def test_with_prometheus_but_none_installed_exits_2_before_writing(tmp_path, capsys,
                                                                   monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "o"
    code = main(["run", _write(tmp_path / "s.yaml", local_manifest()), "-o", str(out),
                 "--with-prometheus", "--trainer", " ".join(FAKE_TRAINER)])
    assert code == 2
    assert capsys.readouterr().err.startswith("critbatch: error: --with-prometheus: no `prome")
    assert not out.exists()


def test_without_a_terminal_progress_is_plain_lines_on_stderr(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0")
    out = tmp_path / "o"
    code = main(["run", _write(tmp_path / "s.yaml", local_manifest(batchSizes=[16])),
                 "-o", str(out), "--direct", "--trainer", " ".join(FAKE_TRAINER)])
    captured = capsys.readouterr()
    assert code == 0
    assert "start: batch_size=16 seed=0" in captured.err
    assert "finished: batch_size=16 seed=0 phase=Reached steps=2000" in captured.err
    assert "Succeeded, trials 1/1, b* 16 (" in captured.out
    assert f"report: {out}/summary.md" in captured.out
