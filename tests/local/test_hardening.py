"""`critbatch run` against bad input and clumsy use: every case ends in one line (exit 2 for
input, 1 for a run that did not succeed), never a traceback. A hostile trainer's results are
test_results.py's; `critbatch report`'s input is test_report_command.py's."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from local_helpers import FAKE_TRAINER, alive, local_manifest, one_line_error, wait_until

from critbatch.cli import main
from critbatch.local import rundir
from critbatch.local.options import RunError, RunOptions
from critbatch.local.runner import LocalRun
from critbatch.local.signals import install_signals
from critbatch.local.supervise import TrialSupervisor

TRAINER = " ".join(FAKE_TRAINER)

pytestmark = pytest.mark.usefixtures("fast_fake")


def _write(path: Path, manifest: dict) -> str:
    path.write_text(yaml.safe_dump(manifest))
    return str(path)


def _trial_pids(proc: subprocess.Popen, count: int) -> list[int]:
    """The pids of the first `count` trials `critbatch run --json` starts."""
    pids: list[int] = []
    while len(pids) < count:
        record = json.loads(proc.stdout.readline())
        if record["event"] == "start" and "pid" in record:
            pids.append(record["pid"])
    return pids


def _status(out: Path) -> dict:
    return yaml.safe_load((out / "status.yaml").read_text())


# -- the manifest ------------------------------------------------------------------------------


def _text_manifest(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "s.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _ok_text() -> str:
    return yaml.safe_dump(local_manifest())


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
) + _ok_text()


@pytest.mark.parametrize(("make", "starts"), [
    (lambda d: _text_manifest(d, _ok_text().replace("fidThreshold: 10", "fidThreshold: .nan")),
     "spec.target.fidThreshold: must be a finite number"),
    (lambda d: _text_manifest(d, _ok_text().replace("maxSteps: 3000", "maxSteps: .inf")),
     "spec.target.maxSteps: must be a finite number, got inf"),
    (lambda d: _text_manifest(d, _ok_text().replace("name: fake", "name: f\xe9").encode("latin-1")),
     "SWEEP: {p} is not UTF-8 text"),
    (lambda d: _text_manifest(d, ""), "SWEEP: {p}: is empty"),
    (lambda d: _text_manifest(d, "- a\n- b\n"), "SWEEP: {p}: holds a list"),
    (lambda d: _text_manifest(d, "[" * 100_000), "SWEEP: {p}: nested too deeply"),
    (lambda d: _text_manifest(d, BOMB), "SWEEP: {p}: more than 100000 values"),
    (lambda d: _text_manifest(d, "&a [*a]"), "SWEEP: {p}: more than 100000 values"),
    (lambda d: _text_manifest(d, "# " + "x" * (1 << 20) + "\n" + _ok_text()),
     "SWEEP: {p} is larger than 1 MiB"),
    (lambda d: d, "SWEEP: {p} holds no CriticalBatchSweep"),
    (lambda d: _link(d / "zero.yaml", "/dev/zero"), "SWEEP: {p} is larger than 1 MiB"),
    (lambda d: _link(d / "loop.yaml", d / "loop.yaml"), "SWEEP: cannot read {p}: Too many"),
    (lambda d: d / "missing.yaml", "SWEEP: no such file: {p}"),
    (lambda d: _text_manifest(d, _ok_text().replace("metadata:\n  name: fake",
                                                    "metadata: [1]")), "metadata: must be"),
])
def test_a_bad_manifest_is_one_line_and_exit_2(tmp_path, capsys, make, starts):
    path = make(tmp_path)
    out = tmp_path / "o"
    assert main(["run", str(path), "-o", str(out), "--trainer", TRAINER]) == 2
    one_line_error(capsys, starts.format(p=path))
    assert not out.exists()


def _link(path: Path, target: str | Path) -> Path:
    path.symlink_to(target)
    return path


# -- the output directory and the options ------------------------------------------------------


def test_an_output_directory_under_a_file_or_on_a_file_is_exit_2(tmp_path, capsys):
    sweep = _write(tmp_path / "s.yaml", local_manifest())
    (tmp_path / "file").write_text("x")
    assert main(["run", sweep, "-o", str(tmp_path / "file" / "sub"), "--trainer", TRAINER]) == 2
    one_line_error(capsys, f"--out: cannot create {tmp_path}/file/sub: {tmp_path}/file is a "
                    "file, not a directory")
    assert main(["run", sweep, "-o", str(tmp_path / "file"), "--trainer", TRAINER]) == 2
    one_line_error(capsys, f"--out: {tmp_path}/file exists and is not a directory")


def test_an_unwritable_output_directory_is_exit_2(tmp_path, capsys, monkeypatch):
    sweep = _write(tmp_path / "s.yaml", local_manifest())

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert main(["run", sweep, "-o", str(tmp_path / "o"), "--trainer", TRAINER]) == 2
    one_line_error(capsys, f"--out: cannot create {tmp_path}/o: Permission denied")
    monkeypatch.undo()
    monkeypatch.setattr(rundir, "open", refuse, raising=False)
    (tmp_path / "o").mkdir()
    assert main(["run", sweep, "-o", str(tmp_path / "o"), "--trainer", TRAINER]) == 2
    one_line_error(capsys, f"--out: cannot write to {tmp_path}/o: Permission denied")


@pytest.mark.parametrize(("args", "starts"), [
    (["--trainer", "/nonexistent/trainer"], "--trainer: no such file: /nonexistent/trainer"),
    (["--trainer", "no-such-trainer-here --x"], "--trainer: no 'no-such-trainer-here' on PATH"),
    (["--trainer", "python 'unclosed"], "--trainer: cannot split"),
    (["--trainer", "/"], "--trainer: / is not an executable file"),
    (["--trainer", TRAINER, "--prometheus", "http://127.0.0.1:9", "--sd-file", "{tmp}"],
     "--sd-file: {tmp} is a directory"),
    (["--trainer", TRAINER, "--prometheus", "http://127.0.0.1:9", "--sd-file",
      "{tmp}/s.yaml/t.json"], "--sd-file: cannot write {tmp}/s.yaml/t.json: {tmp}/s.yaml is a "
     "file, not a directory"),
])
def test_a_bad_trainer_or_sd_file_is_exit_2_before_anything_runs(tmp_path, capsys, args, starts):
    sweep = _write(tmp_path / "s.yaml", local_manifest())
    args = [a.format(tmp=tmp_path) for a in args]
    assert main(["run", sweep, "-o", str(tmp_path / "o"), *args]) == 2
    one_line_error(capsys, starts.format(tmp=tmp_path))
    assert not (tmp_path / "o").exists()


def test_resume_without_a_run_is_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["run", "--resume", "-o", str(tmp_path / "empty")]) == 2
    one_line_error(capsys, f"--out: {tmp_path}/empty holds no run to resume")
    assert main(["run", "--resume"]) == 2
    one_line_error(capsys, "SWEEP.yaml: required")


def test_resume_of_a_run_without_a_status_runs_it(tmp_path, capsys):
    out = tmp_path / "o"
    manifest = local_manifest(batchSizes=[16])
    out.mkdir()
    _write(out / "sweep.yaml", manifest)
    assert main(["run", "--resume", "-o", str(out), "--quiet", "--trainer", TRAINER]) == 0
    assert _status(out)["phase"] == "Succeeded"


# -- the lock ----------------------------------------------------------------------------------


def test_a_second_run_on_a_locked_directory_is_exit_2_naming_the_pid(tmp_path, capsys):
    sweep = _write(tmp_path / "s.yaml", local_manifest(batchSizes=[16]))
    out = tmp_path / "o"
    out.mkdir()
    with open(out / "run.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        for extra in ([], ["--resume"]):
            assert main(["run", sweep, "-o", str(out), "--trainer", TRAINER, *extra]) == 2
            one_line_error(capsys, f"--out: {out} is in use by another critbatch run "
                            "(pid 4242)")
    assert not (out / "sweep.yaml").exists()
    # Once the other run ends the directory is free again.
    assert main(["run", sweep, "-o", str(out), "--trainer", TRAINER, "--quiet"]) == 0


def test_two_real_runs_on_one_directory_one_waits_out(tmp_path):
    sweep = _write(tmp_path / "s.yaml", local_manifest(batchSizes=[16, 32]))
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "critbatch", "run", sweep, "-o", str(out), "--json",
           "--trainer", TRAINER]
    env = dict(os.environ, FAKE_STEP_SECONDS="0.01")
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env)
    try:
        assert json.loads(first.stdout.readline())["event"] == "start"
        second = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=env,
                                timeout=60)
        assert second.returncode == 2
        assert second.stderr == (f"critbatch: error: --out: {out} is in use by another "
                                 f"critbatch run (pid {first.pid}): wait for it to end, or "
                                 "choose another directory\n")
        first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0


# -- a damaged status on --resume --------------------------------------------------------------


@pytest.mark.parametrize(("status", "field"), [
    ("phase: [Running\n", "not valid YAML at line"),
    ("- 1\n- 2\n", "expected a mapping, got list"),
    ("", "empty"),
    ("trials: 7\n", "trials: expected a list, got int"),
    ("trials: [7]\n", "trials[0]: expected a mapping, got int"),
    ("trials: [{batchSize: 16, seed: 0}]\n", "trials[0].phase: missing"),
    ("trials: [{batchSize: 16, seed: 0, phase: Reached, steps: lots}]\n",
     "trials[0].steps: expected an integer or a number or null, got \"lots\""),
    ("trials: [{batchSize: 16, seed: 0, phase: Reached, steps: -5}]\n",
     "trials[0].steps: must be a finite number >= 0"),
    ("trials: [{batchSize: 16, seed: 0, phase: Reached, steps: .nan}]\n",
     "trials[0].steps: must be a finite number >= 0"),
    ("trials: [{batchSize: true, seed: 0, phase: Reached}]\n", "trials[0].batchSize: expected"),
    ("trials: [{batchSize: 16, seed: 0, phase: Done}]\n", "trials[0].phase: expected one of"),
    ("trials: [{batchSize: 16, seed: 0, phase: Reached, steps: 1},"
     " {batchSize: 16, seed: 0, phase: Reached, steps: 2}]\n",
     "trials[1]: batch size 16, seed 0 again (as trials[0])"),
    ("conditions: {Ready: 'yes'}\n", "conditions: expected a list"),
])
def test_a_damaged_status_on_resume_is_one_line_naming_the_file(tmp_path, capsys, status, field):
    out = tmp_path / "o"
    sweep = _write(tmp_path / "s.yaml", local_manifest(batchSizes=[16]))
    assert main(["run", sweep, "-o", str(out), "--quiet", "--trainer", TRAINER]) == 0
    capsys.readouterr()
    (out / "status.yaml").write_text(status)
    assert main(["run", "--resume", "-o", str(out), "--trainer", TRAINER]) == 2
    err = one_line_error(capsys, f"--resume: {out}/status.yaml: {field}")
    assert "remove it to resume" in err or "YAML" in err


# -- --resume and what changes N(b) ------------------------------------------------------------


BIGGAN = {"model": "biggan", "imageSize": 32}


@pytest.mark.parametrize(("base", "field", "value"), [
    ({}, "bf16", True), ({}, "reproducibleCPU", True), ({}, "device", "cuda"), ({}, "width", 8),
    ({}, "zDim", 16), ({}, "model", "wgan-gp"), ({}, "imageSize", 32), ({}, "channels", 3),
    (BIGGAN, "fusedAttention", True),
])
def test_resume_refuses_a_change_that_changes_n_of_b(tmp_path, base, field, value):
    out = tmp_path / "o"
    LocalRun(local_manifest(batchSizes=[16], trainer=base),
             RunOptions(out_dir=out, trainer_command=FAKE_TRAINER, poll_interval=0.05)).run()
    changed = local_manifest(batchSizes=[16], trainer={**base, field: value})
    with pytest.raises(RunError, match=rf"^spec\.trainer\.{field}: differs from the run in "):
        LocalRun(changed, RunOptions(out_dir=out, resume=True,
                                     trainer_command=FAKE_TRAINER)).prepare()


@pytest.mark.parametrize(("before", "after"), [
    ({}, {"cudaGraph": True}),
    (BIGGAN, {**BIGGAN, "recomputeActivations": True}),
], ids=["cudaGraph", "recomputeActivations"])
def test_resume_takes_a_change_which_trains_the_same(tmp_path, before, after):
    out = tmp_path / "o"
    LocalRun(local_manifest(batchSizes=[16], trainer=before),
             RunOptions(out_dir=out, trainer_command=FAKE_TRAINER, poll_interval=0.05)).run()
    changed = local_manifest(batchSizes=[16], trainer=after)
    run = LocalRun(changed, RunOptions(out_dir=out, resume=True, trainer_command=FAKE_TRAINER))
    run.prepare()
    run.unlock()


def test_resume_names_the_old_and_new_value(tmp_path):
    out = tmp_path / "o"
    LocalRun(local_manifest(batchSizes=[16]),
             RunOptions(out_dir=out, trainer_command=FAKE_TRAINER, poll_interval=0.05)).run()
    changed = local_manifest(batchSizes=[16], trainer={"bf16": True})
    with pytest.raises(RunError, match=r"\(true, the run has false\)"):
        LocalRun(changed, RunOptions(out_dir=out, resume=True,
                                     trainer_command=FAKE_TRAINER)).prepare()


# -- honest outcomes ---------------------------------------------------------------------------


FAILS_AT_16 = ('case " $* " in *" --batch-size 16 "*) echo "critbatch-trainer: error: boom" >&2;'
               ' exit 2;; esac; exec {trainer} "$@"')


@pytest.mark.parametrize("view", [["--quiet"], []])
def test_a_sweep_whose_failed_trials_matter_exits_1_saying_why(tmp_path, capsys, view):
    sweep = _write(tmp_path / "s.yaml", local_manifest(batchSizes=[16, 32]))
    script = tmp_path / "trainer.sh"
    script.write_text(FAILS_AT_16.format(trainer=TRAINER))
    out = tmp_path / "o"
    assert main(["run", sweep, "-o", str(out), "--trainer", f"sh {script}", *view]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert _status(out)["phase"] == "Failed"
    assert "TrialsFailed: trials failed at batch size(s) 16" in last
    if view:
        assert last.startswith("Failed, trials 2/2, ")
        assert f"; report: {out}/summary.md; TrialsFailed: " in last


def test_json_done_event_carries_the_reason(tmp_path, capsys):
    sweep = _write(tmp_path / "s.yaml", local_manifest(batchSizes=[16, 32]))
    script = tmp_path / "trainer.sh"
    script.write_text(FAILS_AT_16.format(trainer=TRAINER))
    assert main(["run", sweep, "-o", str(tmp_path / "o"), "--trainer", f"sh {script}",
                 "--json"]) == 1
    done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert done["event"] == "done" and done["reason"].startswith("TrialsFailed: ")


def test_a_succeeded_run_keeps_its_result_line(tmp_path, capsys):
    out = tmp_path / "o"
    sweep = _write(tmp_path / "s.yaml", local_manifest(batchSizes=[16, 32]))
    assert main(["run", sweep, "-o", str(out), "--trainer", TRAINER, "--quiet"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("Succeeded, trials 2/2, b* 16 (")
    assert line.endswith(f"; report: {out}/summary.md")


# -- the output going away ---------------------------------------------------------------------


def test_stdout_closed_stops_the_run_like_ctrl_c(tmp_path):
    """`critbatch run --json | head -2`: trials stopped, status says Interrupted, exit 141."""
    out = tmp_path / "o"
    sweep = _write(tmp_path / "s.yaml", local_manifest(batchSizes=[16, 32]))
    env = dict(os.environ, FAKE_STEP_SECONDS="0.01")
    proc = subprocess.Popen([sys.executable, "-m", "critbatch", "run", sweep, "-o", str(out),
                             "--json", "--trainer", TRAINER],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        pids = _trial_pids(proc, 2)
        proc.stdout.close()  # the reader leaves, as head does
        err = proc.stderr.read().decode()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 141
    assert "Traceback" not in err
    assert err == (f"critbatch: Interrupted (output closed: broken pipe): unfinished trials "
                   f"stopped at their checkpoints; continue with critbatch run --resume -o "
                   f"{out}\n")
    assert wait_until(lambda: not any(alive(p) for p in pids), timeout=5)
    status = _status(out)
    assert status["warnings"][0].startswith("Interrupted (output closed: broken pipe): ")
    assert all(t["phase"] in ("Running", "Pending") for t in status["trials"])


def test_ctrl_c_twice_kills_the_trials_at_once_and_still_writes_the_status(tmp_path):
    stubborn = tmp_path / "stubborn.sh"  # ignores SIGTERM, as a trainer stuck in I/O would
    stubborn.write_text("trap '' TERM\nwhile :; do sleep 0.05; done\n")
    out = tmp_path / "o"
    sweep = _write(tmp_path / "s.yaml", local_manifest(batchSizes=[16, 32]))
    proc = subprocess.Popen([sys.executable, "-m", "critbatch", "run", sweep, "-o", str(out),
                             "--json", "--trainer", f"sh {stubborn}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pids = _trial_pids(proc, 2)
        proc.send_signal(signal.SIGINT)
        for line in proc.stdout:
            if json.loads(line)["event"] == "interrupted":
                break
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)  # the trials would take 15 s to be killed
        rest, err = proc.communicate(timeout=60)
        took = time.monotonic() - started
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert took < 10
    assert "Traceback" not in err
    assert not any(alive(p) for p in pids)
    done = json.loads(rest.strip().splitlines()[-1])
    assert done["reason"].startswith("Interrupted (Ctrl-C): unfinished trials killed without "
                                     "a checkpoint")
    assert _status(out)["warnings"][0] == done["reason"]


def test_a_full_disk_is_one_line_and_the_trials_are_stopped(tmp_path, capsys, monkeypatch):
    real = os.replace
    started = []

    def full(src, dst, *args, **kwargs):  # the temporary file is written; the disk is full
        if Path(dst).name == "status.yaml" and started:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.01")
    real_start = TrialSupervisor.start

    def start(self, st):
        real_start(self, st)
        started.append(self.processes[st.key.name].pid)

    monkeypatch.setattr(TrialSupervisor, "start", start)
    out = tmp_path / "o"
    sweep = _write(tmp_path / "s.yaml", local_manifest(batchSizes=[16]))
    assert main(["run", sweep, "-o", str(out), "--trainer", TRAINER, "--quiet"]) == 1
    err = one_line_error(capsys, f"{out}/status.yaml: cannot write: No space left on device; "
                          "trials stopped at their checkpoints")
    assert f"critbatch run --resume -o {out}" in err
    assert started and not any(alive(p) for p in started)
    assert not list(out.glob(".status.yaml*"))
    # The directory is unlocked again: the run can be resumed once there is room.
    monkeypatch.undo()
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0")
    assert main(["run", "--resume", "-o", str(out), "--trainer", TRAINER, "--quiet"]) == 0


def test_a_signal_ignored_by_nohup_stays_ignored(tmp_path):
    run = LocalRun(local_manifest(batchSizes=[16]), RunOptions(out_dir=tmp_path / "o"))
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        previous = install_signals(run._interrupt)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == run._interrupt
        install_signals(previous)
        assert signal.getsignal(signal.SIGTERM) != run._interrupt
    finally:
        signal.signal(signal.SIGHUP, before)


def test_sigterm_is_named_as_the_cause(tmp_path):
    out = tmp_path / "o"
    sweep = _write(tmp_path / "s.yaml", local_manifest(batchSizes=[16]))
    proc = subprocess.Popen([sys.executable, "-m", "critbatch", "run", sweep, "-o", str(out),
                             "--json", "--trainer", TRAINER],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, FAKE_STEP_SECONDS="0.01"))
    try:
        for line in proc.stdout:
            record = json.loads(line)
            if record["event"] == "start" and "pid" in record:
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err
    assert _status(out)["warnings"][0].startswith("Interrupted (SIGTERM): unfinished trials "
                                                  "stopped at their checkpoints")
