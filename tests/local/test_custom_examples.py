"""The two custom-trainer examples (examples/custom/): each script is a whole critbatch trainer
on its own (the protocol's variables in, a valid result out, checkpoints over a SIGTERM), and
each manifest runs with `critbatch run`. Tiny settings: a trial takes seconds on one thread."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from critbatch.local.options import RunOptions
from critbatch.local.runner import LocalRun
from critbatch.protocol import result_problem
from critbatch.vocabulary import TrialKey

pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "custom"

# Loose targets, met within a few hundred steps (a few seconds of training).
GAN = {"CRITBATCH_TARGET_METRIC": "fid", "CRITBATCH_TARGET_THRESHOLD": "1000",
       "CRITBATCH_TARGET_GOAL": "minimize", "CRITBATCH_MAX_STEPS": "300",
       "CRITBATCH_EVAL_EVERY": "20"}
CLASSIFIER = {"CRITBATCH_TARGET_METRIC": "accuracy", "CRITBATCH_TARGET_THRESHOLD": "0.9",
              "CRITBATCH_TARGET_GOAL": "maximize", "CRITBATCH_MAX_STEPS": "1500",
              "CRITBATCH_EVAL_EVERY": "5"}


def trial_env(target: dict[str, str], batch_size: int, tmp: Path, **more: str) -> dict[str, str]:
    return {**os.environ, **target, "CRITBATCH_BATCH_SIZE": str(batch_size),
            "CRITBATCH_SEED": "0", "CRITBATCH_RESULT_FILE": str(tmp / "result.json"),
            "OMP_NUM_THREADS": "1", **more}


def start(script: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, script], cwd=EXAMPLES, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def checked_result(out: str, tmp: Path, batch_size: int) -> dict:
    """The result: the file and the last stdout line alike, and valid for its trial."""
    line = out.splitlines()[-1]
    assert (tmp / "result.json").read_text() == line + "\n"
    result = json.loads(line)
    assert result_problem(result, TrialKey(batch_size, 0),
                          max_steps=result["max_steps"]) is None, result
    return result


def reported_for_proposition_3_4(result: dict) -> bool:
    return (result["params"] > 0 and result["dataset_size"] > 0
            and result["optimizer"]["name"] == "adam")


def test_the_gan_script_is_a_trainer_on_its_own(tmp_path):
    proc = start("gan.py", trial_env(GAN, 16, tmp_path))
    out, err = finish(proc)
    assert proc.returncode == 0, err[-2000:]
    result = checked_result(out, tmp_path, 16)
    assert result["reached"] is True and result["metric"] == "fid"
    assert result["value"] <= 1000 and result["steps"] % 20 == 0
    assert reported_for_proposition_3_4(result)


def test_the_classifier_script_is_a_trainer_that_resumes_from_its_sigterm_checkpoint(tmp_path):
    """Run whole, and interrupted once and restarted: the two reach the target at the same
    step, as the checkpoint holds the model, Adam, the data order and N(b)'s bookkeeping."""
    (whole := tmp_path / "whole").mkdir()
    (cut := tmp_path / "cut").mkdir()
    (checkpoints := tmp_path / "checkpoints").mkdir()
    uninterrupted = start("classifier.py", trial_env(CLASSIFIER, 2, whole))
    env = trial_env(CLASSIFIER, 2, cut, CRITBATCH_CHECKPOINT_DIR=str(checkpoints))
    proc = start("classifier.py", env)
    try:
        for line in proc.stderr:
            if " step 100 " in line:
                proc.send_signal(signal.SIGTERM)
                break
        out, _ = finish(proc)
    finally:
        whole_out, whole_err = finish(uninterrupted)
    assert uninterrupted.returncode == 0, whole_err[-2000:]
    reference = checked_result(whole_out, whole, 2)
    assert reference["reached"] is True and reference["metric"] == "accuracy"
    assert reference["value"] >= 0.9 and reference["steps"] > 100
    assert reported_for_proposition_3_4(reference)

    assert proc.returncode == 143 and out == ""
    assert (checkpoints / "checkpoint.pt").is_file() and not (cut / "result.json").exists()
    resumed = start("classifier.py", env)
    out, err = finish(resumed)
    assert resumed.returncode == 0, err[-2000:]
    assert " step 5 " not in err  # it went on from the checkpoint
    again = checked_result(out, cut, 2)
    assert (again["steps"], again["value"]) == (reference["steps"], reference["value"])


# ---------------------------------------------------------------------------------------------
# The manifests, end to end
# ---------------------------------------------------------------------------------------------


def small(manifest: str, batch_sizes: list[int], **target) -> dict:
    """The example manifest with fewer batch sizes and a looser, shorter target."""
    doc = yaml.safe_load((EXAMPLES / manifest).read_text())
    doc["spec"]["batchSizes"] = batch_sizes
    doc["spec"]["target"].update(target)
    return doc


@pytest.mark.parametrize(("manifest", "batch_sizes", "target"), [
    ("gan.yaml", [16, 64], {"threshold": 1000, "maxSteps": 300}),
    ("classifier.yaml", [32, 64], {"threshold": 0.9, "maxSteps": 300}),
])
def test_each_example_manifest_runs_as_a_sweep(manifest, batch_sizes, target, tmp_path):
    doc = small(manifest, batch_sizes, **target)
    status = LocalRun(doc, RunOptions(out_dir=tmp_path / "out", workdir=EXAMPLES,
                                      poll_interval=0.1)).run()
    assert status["target"] == {"metric": doc["spec"]["target"]["metric"],
                                "threshold": target["threshold"],
                                "goal": doc["spec"]["target"]["goal"]}
    assert [t["batchSize"] for t in status["trials"]] == batch_sizes
    assert all(t["phase"] in ("Reached", "Censored") for t in status["trials"]), status
    assert status["phase"] == "Succeeded"
    assert status["criticalBatchSize"]["mostProbable"] in batch_sizes
