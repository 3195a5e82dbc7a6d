"""`critbatch run` and `critbatch report` against bad input, clumsy use and a hostile trainer:
every case ends in one line (exit 2 for input, 1 for a run that did not succeed), never a
traceback, and no result is counted that is not its trial's."""

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
from local_helpers import FAKE_TRAINER, alive, sweep_manifest, wait_until

from critbatch.cli import main
from critbatch.local import runner as runner_module
from critbatch.local.runner import LocalRun, RunError, RunOptions, trial_result_problem
from critbatch.spec import TrialKey

TRAINER = " ".join(FAKE_TRAINER)


@pytest.fixture(autouse=True)
def _fast_fake(monkeypatch):
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.001")


def _write(path: Path, manifest: dict) -> str:
    path.write_text(yaml.safe_dump(manifest))
    return str(path)


def _one_line_error(capsys, starts: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"critbatch: error: {starts}"), err
    assert "Traceback" not in err
    return err


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
    return yaml.safe_dump(sweep_manifest())


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
    (lambda d: d, "SWEEP: {p} is a directory, not a file"),
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
    _one_line_error(capsys, starts.format(p=path))
    assert not out.exists()


def _link(path: Path, target: str | Path) -> Path:
    path.symlink_to(target)
    return path


# -- the output directory and the options ------------------------------------------------------


def test_an_output_directory_under_a_file_or_on_a_file_is_exit_2(tmp_path, capsys):
    sweep = _write(tmp_path / "s.yaml", sweep_manifest())
    (tmp_path / "file").write_text("x")
    assert main(["run", sweep, "-o", str(tmp_path / "file" / "sub"), "--trainer", TRAINER]) == 2
    _one_line_error(capsys, f"--out: cannot create {tmp_path}/file/sub: {tmp_path}/file is a "
                    "file, not a directory")
    assert main(["run", sweep, "-o", str(tmp_path / "file"), "--trainer", TRAINER]) == 2
    _one_line_error(capsys, f"--out: {tmp_path}/file exists and is not a directory")


def test_an_unwritable_output_directory_is_exit_2(tmp_path, capsys, monkeypatch):
    sweep = _write(tmp_path / "s.yaml", sweep_manifest())

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert main(["run", sweep, "-o", str(tmp_path / "o"), "--trainer", TRAINER]) == 2
    _one_line_error(capsys, f"--out: cannot create {tmp_path}/o: Permission denied")
    monkeypatch.undo()
    monkeypatch.setattr(runner_module, "open", refuse, raising=False)
    (tmp_path / "o").mkdir()
    assert main(["run", sweep, "-o", str(tmp_path / "o"), "--trainer", TRAINER]) == 2
    _one_line_error(capsys, f"--out: cannot write to {tmp_path}/o: Permission denied")


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
    sweep = _write(tmp_path / "s.yaml", sweep_manifest())
    args = [a.format(tmp=tmp_path) for a in args]
    assert main(["run", sweep, "-o", str(tmp_path / "o"), *args]) == 2
    _one_line_error(capsys, starts.format(tmp=tmp_path))
    assert not (tmp_path / "o").exists()


def test_resume_without_a_run_is_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["run", "--resume", "-o", str(tmp_path / "empty")]) == 2
    _one_line_error(capsys, f"--out: {tmp_path}/empty holds no run to resume")
    assert main(["run", "--resume"]) == 2
    _one_line_error(capsys, "SWEEP.yaml: required")


def test_resume_of_a_run_without_a_status_runs_it(tmp_path, capsys):
    out = tmp_path / "o"
    manifest = sweep_manifest(batchSizes=[16])
    out.mkdir()
    _write(out / "sweep.yaml", manifest)
    assert main(["run", "--resume", "-o", str(out), "--quiet", "--trainer", TRAINER]) == 0
    assert _status(out)["phase"] == "Succeeded"


# -- the lock ----------------------------------------------------------------------------------


def test_a_second_run_on_a_locked_directory_is_exit_2_naming_the_pid(tmp_path, capsys):
    sweep = _write(tmp_path / "s.yaml", sweep_manifest(batchSizes=[16]))
    out = tmp_path / "o"
    out.mkdir()
    with open(out / "run.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        for extra in ([], ["--resume"]):
            assert main(["run", sweep, "-o", str(out), "--trainer", TRAINER, *extra]) == 2
            _one_line_error(capsys, f"--out: {out} is in use by another critbatch run "
                            "(pid 4242)")
    assert not (out / "sweep.yaml").exists()
    # Once the other run ends the directory is free again.
    assert main(["run", sweep, "-o", str(out), "--trainer", TRAINER, "--quiet"]) == 0


def test_two_real_runs_on_one_directory_one_waits_out(tmp_path):
    sweep = _write(tmp_path / "s.yaml", sweep_manifest(batchSizes=[16, 32]))
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
    sweep = _write(tmp_path / "s.yaml", sweep_manifest(batchSizes=[16]))
    assert main(["run", sweep, "-o", str(out), "--quiet", "--trainer", TRAINER]) == 0
    capsys.readouterr()
    (out / "status.yaml").write_text(status)
    assert main(["run", "--resume", "-o", str(out), "--trainer", TRAINER]) == 2
    err = _one_line_error(capsys, f"--resume: {out}/status.yaml: {field}")
    assert "remove it to resume" in err or "YAML" in err


# -- what a trainer hands back -----------------------------------------------------------------


LIAR = """
import json, sys
args = sys.argv[1:]
log = args[args.index("--termination-log") + 1]
batch, seed = int(args[args.index("--batch-size") + 1]), int(args[args.index("--seed") + 1])
result = {{"sweep": "fake", "batch_size": batch, "seed": seed, "reached": True, "steps": 2000,
          "fid": 1.0, "generator_params": 1000, "dataset_size": 1797}}
text = {text}
if {to_file}:
    open(log, "w").write(text)
print(text)
"""


@pytest.mark.parametrize(("text", "to_file", "reason"), [
    ("json.dumps({**result, 'batch_size': batch * 2})", True,
     "result.json: batch size 32, seed 0: another trial's result"),
    ("json.dumps({**result, 'seed': seed + 1})", True,
     "result.json: batch size 16, seed 1: another trial's result"),
    ("json.dumps({**result, 'sweep': 'other'})", True, "result.json: sweep \"other\""),
    ("json.dumps({**result, 'steps': -1})", True, "result.json: steps -1"),
    ("json.dumps({**result, 'steps': float('nan')})", True, "result.json: steps NaN"),
    ("json.dumps({**result, 'steps': 10**6})", True, "above spec.target.maxSteps 3000"),
    ("json.dumps({**result, 'steps': 0})", True, "steps: 0 for a trial that reached"),
    ("json.dumps({**result, 'fid': 'low'})", True, "result.json: fid: expected"),
    ("json.dumps({k: v for k, v in result.items() if k != 'seed'})", True, "seed: missing"),
    ("json.dumps([result])", True, "result.json: not a JSON object"),
    ("'{not json'", True, "result.json: not JSON"),
    ("json.dumps({**result, 'pad': 'x' * 70000})", True, "result.json: larger "
     "than 64 KiB"),
    ("json.dumps({**result, 'batch_size': batch * 2})", False,
     "last line of trainer.log: batch size 32, seed 0: another trial's result"),
    ("json.dumps({**result, 'pad': 'x' * 70000})", False,
     "last line of trainer.log: its last line is longer than 64 KiB"),
])
def test_a_result_that_is_not_its_trials_fails_the_trial(tmp_path, text, to_file, reason):
    script = tmp_path / "liar.py"
    script.write_text(LIAR.format(text=text, to_file=to_file))
    out = tmp_path / "o"
    run = LocalRun(sweep_manifest(batchSizes=[16]),
                   RunOptions(out_dir=out, trainer_command=[sys.executable, str(script)],
                              poll_interval=0.05))
    status = run.run()
    (trial,) = status["trials"]
    assert trial["phase"] == "Failed"
    assert trial["reason"].startswith("refused result: "), trial["reason"]
    assert reason in trial["reason"]
    assert status["phase"] == "Failed"
    assert status["criticalBatchSize"]["measured"] is None


def test_a_stdout_line_that_is_no_json_object_is_no_result(tmp_path):
    script = tmp_path / "quiet.py"
    script.write_text("print('done, no result')\n")
    run = LocalRun(sweep_manifest(batchSizes=[16]),
                   RunOptions(out_dir=tmp_path / "o", poll_interval=0.05,
                              trainer_command=[sys.executable, str(script)]))
    (trial,) = run.run()["trials"]
    assert trial["phase"] == "Failed"
    assert trial["reason"] == "exited 0 without a result: done, no result"


def test_resume_does_not_count_another_trials_result_file(tmp_path):
    out = tmp_path / "o"
    manifest = sweep_manifest(batchSizes=[16, 32])
    first = LocalRun(manifest, RunOptions(out_dir=out, trainer_command=FAKE_TRAINER,
                                          poll_interval=0.05))
    first.run()
    b16, b32 = out / "trials" / "b0016-s0", out / "trials" / "b0032-s0"
    (b16 / "result.json").write_text((b32 / "result.json").read_text())
    (out / "status.yaml").unlink()  # as if the run died before writing it
    second = LocalRun(manifest, RunOptions(out_dir=out, resume=True, poll_interval=0.05,
                                           trainer_command=FAKE_TRAINER))
    trials = {t["batchSize"]: t for t in second.run()["trials"]}
    assert trials[16]["phase"] == "Failed"
    assert "another trial's result" in trials[16]["reason"]
    assert trials[32]["phase"] == "Reached"
    retried = LocalRun(manifest, RunOptions(out_dir=out, resume=True, retry_failed=True,
                                            poll_interval=0.05, trainer_command=FAKE_TRAINER))
    assert {t["batchSize"]: t["phase"] for t in retried.run()["trials"]} == {
        16: "Reached", 32: "Reached"}


def test_trial_result_problem_accepts_the_trainers_result():
    result = {"sweep": "s", "batch_size": 16, "seed": 1, "reached": True, "steps": 40,
              "interpolated_steps": 33.5, "sfo": 640, "fid": 3.2, "threshold": 4.0,
              "max_steps": 100, "wall_seconds": 1.5, "generator_params": 10,
              "dataset_size": 20, "gradient_noise_scale": None,
              "hardware": {"device": "cpu"}}
    assert trial_result_problem(result, TrialKey(16, 1), "s", 100) is None
    assert trial_result_problem({**result, "seed": True}, TrialKey(16, 1)) is not None
    assert trial_result_problem({**result, "steps": 101}, TrialKey(16, 1), "s", 100)


# -- --resume and what changes N(b) ------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("bf16", True), ("reproducibleCPU", True), ("device", "cuda"), ("width", 8), ("zDim", 16),
    ("model", "wgan-gp"), ("imageSize", 32), ("channels", 3),
])
def test_resume_refuses_a_change_that_changes_n_of_b(tmp_path, field, value):
    out = tmp_path / "o"
    LocalRun(sweep_manifest(batchSizes=[16]),
             RunOptions(out_dir=out, trainer_command=FAKE_TRAINER, poll_interval=0.05)).run()
    changed = sweep_manifest(batchSizes=[16])
    changed["spec"]["trainer"][field] = value
    with pytest.raises(RunError, match=rf"^spec\.trainer\.{field}: differs from the run in "):
        LocalRun(changed, RunOptions(out_dir=out, resume=True,
                                     trainer_command=FAKE_TRAINER)).prepare()


def test_resume_takes_a_cuda_graph_change_which_trains_the_same(tmp_path):
    out = tmp_path / "o"
    LocalRun(sweep_manifest(batchSizes=[16]),
             RunOptions(out_dir=out, trainer_command=FAKE_TRAINER, poll_interval=0.05)).run()
    changed = sweep_manifest(batchSizes=[16])
    changed["spec"]["trainer"]["cudaGraph"] = True
    run = LocalRun(changed, RunOptions(out_dir=out, resume=True, trainer_command=FAKE_TRAINER))
    run.prepare()
    run.unlock()


def test_resume_names_the_old_and_new_value(tmp_path):
    out = tmp_path / "o"
    LocalRun(sweep_manifest(batchSizes=[16]),
             RunOptions(out_dir=out, trainer_command=FAKE_TRAINER, poll_interval=0.05)).run()
    changed = sweep_manifest(batchSizes=[16])
    changed["spec"]["trainer"]["bf16"] = True
    with pytest.raises(RunError, match=r"\(true, the run has false\)"):
        LocalRun(changed, RunOptions(out_dir=out, resume=True,
                                     trainer_command=FAKE_TRAINER)).prepare()


# -- honest outcomes ---------------------------------------------------------------------------


FAILS_AT_16 = ('case " $* " in *" --batch-size 16 "*) echo "critbatch-trainer: error: boom" >&2;'
               ' exit 2;; esac; exec {trainer} "$@"')


@pytest.mark.parametrize("view", [["--quiet"], []])
def test_a_sweep_whose_failed_trials_matter_exits_1_saying_why(tmp_path, capsys, view):
    sweep = _write(tmp_path / "s.yaml", sweep_manifest(batchSizes=[16, 32]))
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
    sweep = _write(tmp_path / "s.yaml", sweep_manifest(batchSizes=[16, 32]))
    script = tmp_path / "trainer.sh"
    script.write_text(FAILS_AT_16.format(trainer=TRAINER))
    assert main(["run", sweep, "-o", str(tmp_path / "o"), "--trainer", f"sh {script}",
                 "--json"]) == 1
    done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert done["event"] == "done" and done["reason"].startswith("TrialsFailed: ")


def test_a_succeeded_run_keeps_its_result_line(tmp_path, capsys):
    out = tmp_path / "o"
    sweep = _write(tmp_path / "s.yaml", sweep_manifest(batchSizes=[16, 32]))
    assert main(["run", sweep, "-o", str(out), "--trainer", TRAINER, "--quiet"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("Succeeded, trials 2/2, b* 16 (")
    assert line.endswith(f"; report: {out}/summary.md")


# -- the output going away ---------------------------------------------------------------------


def test_stdout_closed_stops_the_run_like_ctrl_c(tmp_path):
    """`critbatch run --json | head -2`: trials stopped, status says Interrupted, exit 141."""
    out = tmp_path / "o"
    sweep = _write(tmp_path / "s.yaml", sweep_manifest(batchSizes=[16, 32]))
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
    sweep = _write(tmp_path / "s.yaml", sweep_manifest(batchSizes=[16, 32]))
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
    real = Path.write_text
    started = []

    def full(self, text, *args, **kwargs):
        if self.name == ".status.yaml.tmp" and started:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.01")
    real_start = LocalRun.start_trial

    def start(self, st):
        real_start(self, st)
        started.append(self.supervisor.processes[self._name(st.key)].pid)

    monkeypatch.setattr(LocalRun, "start_trial", start)
    out = tmp_path / "o"
    sweep = _write(tmp_path / "s.yaml", sweep_manifest(batchSizes=[16]))
    assert main(["run", sweep, "-o", str(out), "--trainer", TRAINER, "--quiet"]) == 1
    err = _one_line_error(capsys, f"{out}/status.yaml: cannot write: No space left on device; "
                          "trials stopped at their checkpoints")
    assert f"critbatch run --resume -o {out}" in err
    assert started and not any(alive(p) for p in started)
    assert not (out / ".status.yaml.tmp").exists()
    # The directory is unlocked again: the run can be resumed once there is room.
    monkeypatch.undo()
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.001")
    assert main(["run", "--resume", "-o", str(out), "--trainer", TRAINER, "--quiet"]) == 0


# -- critbatch report --------------------------------------------------------------------------


def _resource(name: str) -> dict:
    resource = sweep_manifest(name="x")
    resource["metadata"]["name"] = name
    resource["status"] = {
        "phase": "Succeeded", "trialsDone": 1, "trialsTotal": 1,
        "trials": [{"batchSize": 16, "seed": 0, "phase": "Reached", "steps": 2000,
                    "sfo": 32000}],
        "criticalBatchSize": {"measured": 16},
    }
    return resource


@pytest.mark.parametrize("name", ["../../escaped", "/escaped-abs", "..", "a/../../b",
                                  "\x1b[31mred"])
def test_report_stays_inside_out_whatever_the_name(tmp_path, monkeypatch, name):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    listing = {"apiVersion": "v1", "kind": "List",
               "items": [_resource(name), _resource(name)]}
    (work / "list.yaml").write_text(yaml.safe_dump(listing))
    assert main(["report", "list.yaml", "-o", "r"]) == 0
    (work / "one.yaml").write_text(yaml.safe_dump(_resource(name)))
    assert main(["report", "one.yaml"]) == 0
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("summary.md")}
    assert len(written) == 3
    assert all(p.parts[0] == "work" for p in written), written
    assert sum(p.parts[1] == "r" for p in written) == 2


def test_report_refuses_a_link_inside_out_that_leads_outside(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "r" / "evil").symlink_to(tmp_path / "elsewhere")
    listing = {"kind": "List", "items": [_resource("evil"), _resource("good")]}
    (tmp_path / "list.yaml").write_text(yaml.safe_dump(listing))
    assert main(["report", "list.yaml", "-o", "r"]) == 2
    _one_line_error(capsys, "--out: r/evil leads outside r")
    assert not list((tmp_path / "elsewhere").iterdir())


def test_report_replaces_a_linked_file_instead_of_following_it(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (out / "summary.md").symlink_to(victim)
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(_resource("x")))
    assert main(["report", str(tmp_path / "one.yaml"), "-o", str(out)]) == 0
    assert victim.read_text() == "keep"
    assert not (out / "summary.md").is_symlink()


@pytest.mark.parametrize(("status", "starts"), [
    ({"trials": [{"batchSize": "big", "phase": "Reached"}]},
     "status.trials[0].batchSize: expected a number"),
    ({"trials": [{"batchSize": 10**30, "phase": "Reached", "steps": 5}]},
     "status.trials[0].batchSize: expected an integer in 1..1048576"),
    ({"trials": [], "warnings": 5}, "status.warnings: expected a list"),
    ({"trials": [], "criticalBatchSize": [1]}, "status.criticalBatchSize: expected a mapping"),
    ({"trials": [], "criticalBatchSize": {"plausible": [[1]]}},
     "status.criticalBatchSize.plausible[0]: expected a number"),
    ({"trials": [], "criticalBatchSize": {"probabilities": {"x": 1}}},
     "status.criticalBatchSize.probabilities: 'x' is not a batch size"),
])
def test_report_of_a_garbled_status_is_exit_2_naming_the_field(tmp_path, capsys, status, starts):
    resource = _resource("x")
    resource["status"] = {"phase": "Running", **status}
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(resource))
    assert main(["report", str(tmp_path / "one.yaml"), "-o", str(tmp_path / "r")]) == 2
    _one_line_error(capsys, starts)


def test_report_out_on_a_file_and_bad_files_are_exit_2(tmp_path, capsys):
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(_resource("x")))
    (tmp_path / "file").write_text("")
    assert main(["report", str(tmp_path / "one.yaml"), "-o", str(tmp_path / "file")]) == 2
    _one_line_error(capsys, f"--out: {tmp_path}/file exists and is not a directory")
    (tmp_path / "bad.yaml").write_bytes(b"name: \xff\n")
    assert main(["report", str(tmp_path / "bad.yaml")]) == 2
    _one_line_error(capsys, f"FILE: {tmp_path}/bad.yaml is not UTF-8 text")
    (tmp_path / "deep.yaml").write_text("[" * 100_000)
    assert main(["report", str(tmp_path / "deep.yaml")]) == 2
    _one_line_error(capsys, f"{tmp_path}/deep.yaml: nested too deeply")


def test_a_signal_ignored_by_nohup_stays_ignored(tmp_path):
    run = LocalRun(sweep_manifest(batchSizes=[16]), RunOptions(out_dir=tmp_path / "o"))
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        previous = run._install_signals(run._interrupt)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == run._interrupt
        run._install_signals(previous)
        assert signal.getsignal(signal.SIGTERM) != run._interrupt
    finally:
        signal.signal(signal.SIGHUP, before)


def test_sigterm_is_named_as_the_cause(tmp_path):
    out = tmp_path / "o"
    sweep = _write(tmp_path / "s.yaml", sweep_manifest(batchSizes=[16]))
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
