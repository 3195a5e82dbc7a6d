"""A sweep that runs the user's own trainer (`spec.trainer.command`) on this machine: the trial
protocol's variables in, its result out, in the manifest's directory with this Python first on
PATH; a trainer that breaks the protocol fails its own trial, with the part it broke named, and
the sweep goes on."""

from __future__ import annotations

import sys

import pytest
import yaml
from local_helpers import run_events

from critbatch.cli import main
from critbatch.local.options import RunError, RunOptions
from critbatch.local.runner import LocalRun

# A trainer written against the protocol by hand (no critbatch import): accuracy rises
# linearly to the target in N(b) = 40 b / (b - 24) steps (the model's shape, b* = 48). Some
# batch sizes break the protocol.
TRAINER = r'''
import json, math, os, sys, time
env = os.environ
b, seed = int(env["CRITBATCH_BATCH_SIZE"]), int(env["CRITBATCH_SEED"])
tau, goal = float(env["CRITBATCH_TARGET_THRESHOLD"]), env["CRITBATCH_TARGET_GOAL"]
max_steps, every = int(env["CRITBATCH_MAX_STEPS"]), int(env["CRITBATCH_EVAL_EVERY"])
assert env["CRITBATCH_TARGET_METRIC"] == "accuracy" and goal == "maximize"
assert os.path.isdir(env["CRITBATCH_CHECKPOINT_DIR"])
open("cwd-seen", "a").write(os.getcwd() + "\n")
if b == 2:
    sys.exit(0)  # no result at all
if b == 4:
    open(env["CRITBATCH_RESULT_FILE"], "w").write("accuracy was great")
    sys.exit(0)
if b == 8:
    raise SystemExit("CUDA error: out of memory")
if b == 16:
    time.sleep(600)  # never reports
n = math.ceil(40 * b / (b - 24))
steps, value = max_steps, 0.0
for step in range(every, max_steps + 1, every):
    value = min(1.0, tau * step / n)
    if value >= tau:
        steps = step
        break
result = {"batch_size": b, "seed": seed, "reached": value >= tau, "steps": steps,
          "metric": "accuracy", "value": value, "params": 5000, "dataset_size": 1797,
          "optimizer": {"name": "adam", "learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999}}
line = json.dumps(result, separators=(",", ":"))
open(env["CRITBATCH_RESULT_FILE"], "w").write(line)
print(line)
'''


def _manifest(batch_sizes: list[int], **trainer) -> dict:
    return {
        "apiVersion": "critbatch.dev/v1alpha1", "kind": "CriticalBatchSweep",
        "metadata": {"name": "own"},
        "spec": {
            "trainer": {"command": ["python", "trainer.py"], "backoffLimit": 0, **trainer},
            "batchSizes": batch_sizes,
            "target": {"metric": "accuracy", "threshold": 0.9, "goal": "maximize",
                       "maxSteps": 400, "evalEvery": 10},
            "parallelism": 3, "pruning": {"sfoBound": False},
        },
    }


@pytest.fixture
def project(tmp_path):
    """A user's project directory: the trainer script beside its sweep manifest."""
    (tmp_path / "trainer.py").write_text(TRAINER)
    return tmp_path


def test_a_sweep_of_the_users_trainer_measures_b_star_and_names_its_metric(project):
    out = project / "out"
    status = LocalRun(_manifest([32, 64, 128, 256]),
                      RunOptions(out_dir=out, workdir=project, poll_interval=0.05)).run()
    assert status["phase"] == "Succeeded", status
    assert status["target"] == {"metric": "accuracy", "threshold": 0.9, "goal": "maximize"}
    rows = {t["batchSize"]: t for t in status["trials"]}
    # N(b) = 40 b / (b - 24), rounded up to the evaluation interval of 10.
    assert {b: r["steps"] for b, r in rows.items()} == {32: 160, 64: 70, 128: 50, 256: 50}
    assert all(r["phase"] == "Reached" and r["value"] >= 0.9 for r in rows.values())
    assert status["criticalBatchSize"]["measured"] == 64
    # The trainer reported its optimizer, parameters and data: Proposition 3.4 ran.
    cbs = status["criticalBatchSize"]
    assert cbs["optimizer"] == {"name": "adam", "learningRate": 1e-3, "beta1": 0.9,
                                "beta2": 0.999}
    assert cbs["noiseRatio"] is not None and cbs["generatorParams"] == 5000
    assert set((project / "cwd-seen").read_text().split()) == {str(project)}
    summary = (out / "summary.md").read_text()
    assert "target accuracy ≥ 0.9" in summary and "| accuracy |" in summary


def test_a_trainer_that_breaks_the_protocol_fails_its_trial_and_the_sweep_goes_on(project):
    out = project / "out"
    status = LocalRun(_manifest([2, 4, 8, 16, 32, 64], activeDeadlineSeconds=3),
                      RunOptions(out_dir=out, workdir=project, poll_interval=0.05)).run()
    rows = {t["batchSize"]: t for t in status["trials"]}
    assert {b: r["phase"] for b, r in rows.items()} == {
        2: "Failed", 4: "Failed", 8: "Failed", 16: "Failed", 32: "Reached", 64: "Reached"}
    assert rows[2]["reason"].startswith("exited 0 without a result (in neither CRITBATCH_RESULT")
    assert rows[4]["reason"].startswith("refused result: result.json: not JSON")
    assert rows[8]["reason"].startswith("exit 1 (crashed): CUDA error: out of memory")
    assert rows[16]["reason"].startswith("DeadlineExceeded: no result within 3 s")
    assert status["criticalBatchSize"]["measured"] == 64
    assert [e["batch_size"] for e in run_events(out) if e["event"] == "failed"] \
        and status["phase"] == "Failed"  # failed trials where b* may lie: not a sound answer


def test_without_an_optimizer_in_the_result_the_estimates_are_skipped_with_a_reason(project):
    script = project / "trainer.py"
    script.write_text(TRAINER.replace('"optimizer": {"name": "adam", "learning_rate": 1e-3, '
                                      '"beta1": 0.9, "beta2": 0.999}', '"optimizer": None'))
    status = LocalRun(_manifest([32, 64]),
                      RunOptions(out_dir=project / "out", workdir=project,
                                 poll_interval=0.05)).run()
    assert status["criticalBatchSize"]["noiseRatio"] is None
    assert any(w.startswith("noiseRatio and estimates: skipped, the trainer reports no "
                            "optimizer") for w in status["warnings"])


def test_the_trainer_option_replaces_only_the_built_in_trainer(project):
    with pytest.raises(RunError, match=r"^--trainer: this sweep names its own trainer"):
        LocalRun(_manifest([32]), RunOptions(out_dir=project / "out", workdir=project,
                                             trainer_command=[sys.executable, "x.py"]))
    missing = _manifest([32])
    missing["spec"]["trainer"]["command"] = ["./missing.sh"]
    with pytest.raises(RunError, match=r"^spec.trainer.command\[0\]: no such file: "):
        LocalRun(missing, RunOptions(out_dir=project / "o2", workdir=project)).prepare()
    assert not (project / "out").exists() and not (project / "o2").exists()


def test_critbatch_run_runs_the_command_beside_its_manifest(project, monkeypatch, capsys):
    sweep = project / "own.yaml"
    sweep.write_text(yaml.safe_dump(_manifest([32, 64])))
    monkeypatch.chdir(project.parent)  # not the manifest's directory
    code = main(["run", str(sweep), "-o", str(project / "out"), "--quiet"])
    assert code == 0, capsys.readouterr()
    assert capsys.readouterr().out.startswith("Succeeded, trials 2/2")
    assert set((project / "cwd-seen").read_text().split()) == {str(project)}


def test_a_trainer_that_lost_its_metrics_port_is_started_again(project):
    """The helper's bad-configuration exit for a port taken meanwhile is a race, not the
    user's mistake: the trial restarts on a new port, as the built-in trainer's would."""
    script = project / "trainer.py"
    script.write_text(
        "import os, sys\n"
        "if not os.path.exists('tried'):\n"
        "    open('tried', 'w').close()\n"
        "    print('trainer.py: error: CRITBATCH_METRICS_PORT: cannot listen on 127.0.0.1:9: '\n"
        "          'address in use', file=sys.stderr)\n"
        "    sys.exit(2)\n" + TRAINER)
    status = LocalRun(_manifest([64]),
                      RunOptions(out_dir=project / "out", workdir=project,
                                 poll_interval=0.05)).run()
    (row,) = status["trials"]
    assert (row["phase"], row["restarts"]) == ("Reached", 0)
