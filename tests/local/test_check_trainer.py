"""`critbatch check-trainer`: a training command run once as a tiny trial and judged part by
part against the trial protocol (critbatch.conformance).

The scripts in trainers/ each break one part; trainers/good.py speaks the protocol by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from critbatch import protocol
from critbatch.cli import main
from critbatch.conformance import Observed, Status, evaluate, passed
from critbatch.protocol import TrialSettings
from critbatch.vocabulary import Goal, TrialKey

TRAINERS = Path(__file__).resolve().parent / "trainers"


def script(name: str) -> list[str]:
    return [sys.executable, str(TRAINERS / f"{name}.py")]


def check(capsys, command: list[str], *options: str) -> tuple[int, dict]:
    code = main(["check-trainer", "--json", *options, "--", *command])
    return code, json.loads(capsys.readouterr().out)


def parts(report: dict) -> dict[str, tuple[str, str]]:
    return {c["part"]: (c["status"], c["detail"]) for c in report["checks"]}


def test_a_hand_written_protocol_trainer_conforms(capsys, monkeypatch) -> None:
    monkeypatch.setenv(protocol.SEED, "5")  # the caller's own variables are not the trial's
    code, report = check(capsys, script("good"), "--threshold", "5", "--eval-every", "5")
    seen = parts(report)
    assert code == 0 and report["passed"] is True
    assert {p for p, (status, _) in seen.items() if status != "ok"} == {"metrics endpoint"}
    assert seen["metrics endpoint"][0] == "warning"  # optional: good.py serves no /metrics
    assert seen["result file"][1] == "reached true, steps 20"
    assert seen["target"][1] == "reached true: fid 4.7619 <= 5"


def test_a_maximized_metric_is_judged_by_its_goal(capsys) -> None:
    code, report = check(capsys, script("good"), "--threshold", "0.8", "--metric", "accuracy",
                         "--goal", "maximize", "--max-steps", "30")
    assert code == 0  # censored at the budget: a valid result too
    assert parts(report)["target"] == ("ok", "reached false: accuracy 0.75 not >= 0.8")


def test_sigterm_checkpoints_and_exits_143_without_a_result(capsys, monkeypatch) -> None:
    monkeypatch.setenv("GOOD_STEP_SECONDS", "0.05")
    code, report = check(capsys, script("good"), "--threshold", "0.01",
                         "--sigterm-after", "2", "--timeout", "60")
    seen = parts(report)
    assert code == 0, seen
    assert seen["exit code"] == ("ok", "143 after SIGTERM")
    assert seen["checkpoint on SIGTERM"] == ("ok", "1 file(s) in CRITBATCH_CHECKPOINT_DIR")
    assert seen["no result after SIGTERM"] == ("ok", "none written")


@pytest.mark.parametrize("name,part,status,detail", [
    ("no_result", "result file", "missing", "nothing written to CRITBATCH_RESULT_FILE"),
    ("garbage_json", "result file", "broken", "not JSON"),
    ("nonfinite_steps", "result file", "broken", "steps: must be a finite number >= 0, got NaN"),
    ("wrong_seed", "batch size, seed, sweep", "broken", "seed 1: another trial's result"),
    ("crash", "exit code", "broken", "exit code 1 (a crash), expected 0: RuntimeError: out of "
                                     "memory in step 3"),
    ("hang", "exit code", "broken", "never finished: killed after 2 s (--timeout)"),
])
def test_a_trainer_that_breaks_one_part_is_told_which(name, part, status, detail,
                                                       capsys) -> None:
    timeout = "2" if name == "hang" else "60"
    code, report = check(capsys, script(name), "--threshold", "5", "--timeout", timeout)
    got_status, got_detail = parts(report)[part]
    assert code == 1 and report["passed"] is False
    assert got_status == status and detail in got_detail, (got_status, got_detail)


def test_the_table_ends_with_a_one_line_verdict(capsys) -> None:
    assert main(["check-trainer", "--threshold", "5", "--", *script("wrong_seed")]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "does not conform: batch size, seed, sweep"
    assert any("broken" in line and "another trial's" in line for line in out)


@pytest.mark.parametrize("argv,message", [
    (["--threshold", "5"], "command: missing"),
    (["--threshold", "5", "--"], "command: missing"),
    (["--threshold", "5", "--batch-size", "0", "--", "true"], "--batch-size: must be an integer"),
    (["--threshold", "inf", "--", "true"], "--threshold: must be a finite number"),
    (["--threshold", "5", "--goal", "up", "--", "true"], "--goal: expected minimize or maximize"),
    (["--threshold", "5", "--timeout", "2", "--sigterm-after", "3", "--", "true"],
     "--sigterm-after: must be below --timeout 2"),
    (["--threshold", "5", "--", "no-such-command-here"], "command: cannot run"),
    (["--", "true"], "the following arguments are required: --threshold"),
])
def test_bad_usage_exits_2_with_one_line(argv, message, capsys) -> None:
    assert main(["check-trainer", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("critbatch") and message in err and "\n" not in err


@pytest.mark.slow
def test_the_built_in_trainer_conforms(capsys, tmp_path, monkeypatch) -> None:
    pytest.importorskip("torch")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    trainer = [sys.executable, "-m", "critbatch_trainer", "--dataset", "digits", "--lr-g", "5e-4",
               "--lr-d", "5e-4", "--eval-samples", "250", "--threads", "1", "--gns-every", "0",
               "--stats-cache", str(tmp_path)]
    code, report = check(capsys, trainer, "--threshold", "700", "--batch-size", "16",
                         "--max-steps", "200", "--eval-every", "20", "--timeout", "120")
    seen = parts(report)
    assert code == 0, seen
    assert seen["metrics endpoint"][0] == seen["metrics series"][0] == "ok"
    assert seen["fields for Proposition 3.4"] == (  # the optimizer is the sweep spec's
        "warning", "without optimizer: estimates for other optimizers need them (optional)")


# ---------------------------------------------------------------------------------------------
# The judgement alone (critbatch.conformance.evaluate), on records of what a run showed
# ---------------------------------------------------------------------------------------------

SETTINGS = TrialSettings(batch_size=8, seed=0, max_steps=200, threshold=50.0, metric="loss",
                         goal=Goal.minimize, metrics_port=9100, metrics_host="127.0.0.1",
                         sweep="check-trainer")


def result(**fields) -> dict:
    return {"batch_size": 8, "seed": 0, "reached": True, "steps": 40, **fields}


def observed(data: dict | None = None, **fields) -> Observed:
    line = json.dumps(data, separators=(",", ":")) if data is not None else None
    base = {"exit_code": 0, "seconds": 1.0, "result_file": line.encode() if line else None,
            "last_line": line}
    return Observed(**{**base, **fields})


def judged(seen: Observed) -> dict[str, tuple[str, str]]:
    return {c.part: (c.status.value, c.detail) for c in evaluate(SETTINGS, seen)}


@pytest.mark.parametrize("data,detail", [
    (result(value=60.0), "reached true, but loss 60 not <= 50"),
    (result(reached=False, value=10.0, steps=200), "reached false, but loss 10 <= 50"),
    (result(threshold=5), "threshold 5, but CRITBATCH_TARGET_THRESHOLD is 50.0"),
    (result(metric="fid"), "metric \"fid\", but CRITBATCH_TARGET_METRIC is \"loss\""),
    (result(goal="maximize"), "goal \"maximize\", but CRITBATCH_TARGET_GOAL is \"minimize\""),
])
def test_reached_must_agree_with_the_value_and_the_target_told(data, detail) -> None:
    assert judged(observed(data))["target"] == ("broken", detail)


def test_steps_above_the_budget_are_broken() -> None:
    seen = judged(observed(result(reached=False, steps=201)))
    assert seen["steps within the budget"] == (
        "broken", "steps 201 above spec.target.maxSteps 200 (CRITBATCH_MAX_STEPS)")


def test_a_result_file_a_cluster_would_cut_or_could_not_read_is_broken() -> None:
    big = observed(result(hardware={"note": "x" * 4000}))
    assert judged(big)["result file"] == ("broken", f"{len(big.result_file)} bytes: a cluster's "
                                                    "termination message keeps 4000")
    pretty = json.dumps(result(), indent=1)
    assert judged(observed(result(), result_file=pretty.encode()))["result file"][0] == "broken"
    assert judged(observed(result(), result_file=b"\xff\xfe"))["result file"] == (
        "broken", "not UTF-8 text")


def test_the_stdout_line_must_be_the_same_result() -> None:
    seen = judged(observed(result(), last_line=json.dumps(result(steps=41))))
    assert seen["stdout last line"] == ("broken", "a result other than the result file's")
    only_stdout = judged(observed(result(), result_file=None))
    assert only_stdout["result file"][0] == "missing"
    assert only_stdout["stdout last line"][0] == "ok"
    assert only_stdout["batch size, seed, sweep"][0] == "ok"  # judged on the line instead


@pytest.mark.parametrize("code,detail", [
    (2, "exit code 2 (bad configuration), expected 0: error: CRITBATCH_SEED: bad"),
    (-9, "killed by SIGKILL, expected 0: error: CRITBATCH_SEED: bad"),
])
def test_a_failed_exit_is_broken_with_the_last_stderr_line(code, detail) -> None:
    seen = judged(observed(None, exit_code=code, stderr_tail="error: CRITBATCH_SEED: bad"))
    assert seen["exit code"] == ("broken", detail)


@pytest.mark.parametrize("fields,expected", [
    ({"exit_code": 143, "checkpoint_files": 0},
     {"checkpoint on SIGTERM": ("missing", "nothing written to CRITBATCH_CHECKPOINT_DIR")}),
    ({"exit_code": -15, "checkpoint_files": 0},
     {"exit code": ("broken", "killed by SIGTERM: no handler, so no checkpoint (expected exit "
                              "143)")}),
    ({"exit_code": 0, "checkpoint_files": 2, "result_file": json.dumps(result()).encode(),
      "last_line": json.dumps(result())},
     {"exit code": ("broken", "exit code 0 after SIGTERM, expected 143"),
      "no result after SIGTERM": ("broken", "the result file and a JSON line on stdout: a "
                                            "stopped trial has no result, it resumes")}),
])
def test_after_sigterm_a_checkpoint_and_no_result(fields, expected) -> None:
    seen = judged(observed(None, sigterm_after=0.5, sigterm_sent=0.5, **fields))
    assert {part: seen[part] for part in expected} == expected
    assert not passed(evaluate(SETTINGS, observed(None, sigterm_after=0.5, sigterm_sent=0.5,
                                                  **fields)))


def test_a_trial_that_ends_before_the_sigterm_is_judged_as_finished_with_a_warning() -> None:
    seen = judged(observed(result(value=1.0), sigterm_after=5.0))
    assert seen["SIGTERM"] == ("warning", "the trial ended after 1.0 s, before --sigterm-after 5: "
                                          "not tested")
    assert seen["result file"][0] == "ok"


@pytest.mark.parametrize("fields,status,detail", [
    ({"metrics_pages": 3, "metrics_seen": frozenset({"step", "finished", "value"})}, "ok",
     "seen: finished, step, value"),
    ({"metrics_pages": 3, "metrics_seen": frozenset(),
      "metrics_trials": frozenset({TrialKey(8, 1)})}, "warning",
     'no critbatch_trainer_step, critbatch_trainer_finished with batch_size="8", seed="0"; '
     "series were labeled for b8-s1 (optional)"),
    ({"metrics_pages": 3, "metrics_invalid": "step +Inf"}, "warning", "refused: step +Inf"),
])
def test_metrics_are_optional_and_only_warn(fields, status, detail) -> None:
    checks = evaluate(SETTINGS, observed(result(value=1.0), **fields))
    seen = {c.part: (c.status.value, c.detail) for c in checks}
    assert seen["metrics series"] == (status, detail)
    assert passed(checks)


def test_the_fields_for_proposition_3_4_only_warn() -> None:
    seen = judged(observed(result(value=1.0, params=10, optimizer={"name": "sgd"})))
    assert seen["fields for Proposition 3.4"] == (
        "warning", 'without dataset_size, optimizer "sgd": Proposition 3.4 covers adam, '
                   "adabelief, rmsprop only: estimates for other optimizers need them "
                   "(optional)")
    assert Status.warning not in {c.status for c in evaluate(SETTINGS, observed(result(
        value=1.0, params=10, dataset_size=100,
        optimizer={"name": "adam", "learning_rate": 1e-3, "beta1": 0.5, "beta2": 0.9}),
        metrics_pages=1, metrics_seen=frozenset({"step", "finished"})))}
