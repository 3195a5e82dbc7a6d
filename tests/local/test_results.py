"""What a trainer hands back: a result counts only when it is its trial's (docs/contracts.md);
anything else fails the trial, and --resume never counts it either."""

from __future__ import annotations

import sys

import pytest
from local_helpers import FAKE_TRAINER, local_manifest

from critbatch.local.options import RunOptions
from critbatch.local.runner import LocalRun
from critbatch.protocol import result_problem
from critbatch.vocabulary import TrialKey

pytestmark = pytest.mark.usefixtures("fast_fake")


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
    ("json.dumps({**result, 'steps': -1})", True,
     "result.json: steps: must be a finite number >= 0, got -1"),
    ("json.dumps({**result, 'steps': float('nan')})", True,
     "result.json: steps: must be a finite number >= 0, got NaN"),
    ("json.dumps({**result, 'steps': 10**6})", True, "above spec.target.maxSteps 3000"),
    ("json.dumps({**result, 'steps': 0})", True, "steps: 0 for a trial that reached"),
    ("json.dumps({**result, 'fid': 'low'})", True, "result.json: fid: expected"),
    ("json.dumps({k: v for k, v in result.items() if k != 'seed'})", True,
     "seed: missing (required: batch_size, seed, reached, steps)"),
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
    run = LocalRun(local_manifest(batchSizes=[16]),
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
    run = LocalRun(local_manifest(batchSizes=[16]),
                   RunOptions(out_dir=tmp_path / "o", poll_interval=0.05,
                              trainer_command=[sys.executable, str(script)]))
    (trial,) = run.run()["trials"]
    assert trial["phase"] == "Failed"
    assert trial["reason"] == ("exited 0 without a result (in neither CRITBATCH_RESULT_FILE nor "
                               "the last line of stdout): done, no result")


def test_resume_does_not_count_another_trials_result_file(tmp_path):
    out = tmp_path / "o"
    manifest = local_manifest(batchSizes=[16, 32])
    first = LocalRun(manifest, RunOptions(out_dir=out, trainer_command=FAKE_TRAINER,
                                          poll_interval=0.05))
    first.run()
    b16, b32 = out / "trials" / "b16-s0", out / "trials" / "b32-s0"
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


def test_result_problem_accepts_the_built_in_trainers_result():
    result = {"sweep": "s", "batch_size": 16, "seed": 1, "reached": True, "steps": 40,
              "interpolated_steps": 33.5, "sfo": 640, "fid": 3.2, "threshold": 4.0,
              "max_steps": 100, "wall_seconds": 1.5, "generator_params": 10,
              "dataset_size": 20, "gradient_noise_scale": None,
              "hardware": {"device": "cpu"}}
    assert result_problem(result, TrialKey(16, 1), sweep="s", max_steps=100) is None
    assert result_problem({**result, "seed": True}, TrialKey(16, 1)) is not None
    assert result_problem({**result, "steps": 101}, TrialKey(16, 1), sweep="s",
                          max_steps=100)
