"""`critbatch.reporter`: what a training script gets from the helper (docs/trial-protocol.md):
its settings from the variables and flags, its metrics on /metrics, the stop decision, the
result where the sweep reads it, and SIGTERM handled between two steps."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from loopback import free_port, http_get

from critbatch.metrics import scrape
from critbatch.protocol import TrialSettings, result_problem
from critbatch.reporter import RESULT_LIMIT, TrialReporter, optimizer_settings
from critbatch.vocabulary import Goal, TrialKey

ENV = {
    "CRITBATCH_BATCH_SIZE": "8",
    "CRITBATCH_SEED": "1",
    "CRITBATCH_TARGET_METRIC": "fid",
    "CRITBATCH_TARGET_THRESHOLD": "50",
    "CRITBATCH_TARGET_GOAL": "minimize",
    "CRITBATCH_MAX_STEPS": "100",
    "CRITBATCH_SWEEP": "s",
}


def reporter(out: io.StringIO | None = None, **settings) -> TrialReporter:
    """A reporter without an endpoint; settings over ENV's."""
    base = TrialSettings.from_env(ENV)
    fields = {**{k: getattr(base, k) for k in ("batch_size", "seed", "max_steps", "threshold",
                                               "metric", "goal", "sweep")}, **settings}
    r = TrialReporter(TrialSettings(**fields), serve=False, out=out or io.StringIO(), prog="t")
    r.close()  # the SIGTERM handler back; the tests that need it install their own
    return r


def from_env(argv: list[str], env: dict[str, str]) -> TrialReporter:
    r = TrialReporter.from_env(argv, env, serve=False, prog="train.py")
    r.close()
    return r


# ---------------------------------------------------------------------------------------------
# Settings: the variables, the flags over them, one line naming what is wrong
# ---------------------------------------------------------------------------------------------


def test_the_settings_come_from_the_variables():
    r = from_env([], ENV)
    assert (r.batch_size, r.seed, r.max_steps) == (8, 1, 100)
    assert (r.settings.metric, r.settings.threshold, r.settings.goal) == ("fid", 50.0,
                                                                          Goal.minimize)
    assert r.settings.sweep == "s" and r.checkpoint_dir is None and r.eval_every(20) == 20


def test_flags_override_the_variables_and_leave_the_scripts_own_arguments():
    r = from_env(["--batch-size", "32", "--goal", "maximize", "--metric", "accuracy",
                  "--threshold", "0.9", "--lr", "0.1", "--checkpoint-dir", "ck"], ENV)
    assert (r.batch_size, r.seed) == (32, 1)
    assert (r.settings.metric, r.settings.threshold, r.settings.goal) == ("accuracy", 0.9,
                                                                          Goal.maximize)
    assert r.checkpoint_dir == "ck"
    assert r.args == ["--lr", "0.1"]


def test_flags_alone_are_a_whole_trial():
    r = from_env(["--batch-size", "4", "--seed", "0", "--max-steps", "10", "--threshold", "1",
                  "--metric", "loss", "--goal", "minimize"], {})
    assert r.settings.key == TrialKey(4, 0)


@pytest.mark.parametrize(("argv", "env", "named"), [
    ([], {k: v for k, v in ENV.items() if k != "CRITBATCH_SEED"}, "CRITBATCH_SEED: missing"),
    ([], {**ENV, "CRITBATCH_BATCH_SIZE": "0"}, "CRITBATCH_BATCH_SIZE: expected an integer"),
    ([], {**ENV, "CRITBATCH_TARGET_GOAL": "up"}, "CRITBATCH_TARGET_GOAL: expected minimize"),
    (["--batch-size", "many"], ENV, "--batch-size: expected an integer >= 1, got 'many'"),
    (["--threshold", "nan"], ENV, "--threshold: expected a finite number"),
])
def test_bad_settings_exit_2_with_one_line_naming_the_variable_or_flag(argv, env, named,
                                                                      capsys):
    with pytest.raises(SystemExit) as exc:
        from_env(argv, env)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"train.py: error: {named}"), err


def test_a_port_that_cannot_be_bound_exits_2_naming_the_variable(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**ENV, "CRITBATCH_METRICS_PORT": str(port), "CRITBATCH_METRICS_HOST": "127.0.0.1"}
        with pytest.raises(SystemExit) as exc:
            TrialReporter.from_env([], env, prog="train.py")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"train.py: error: CRITBATCH_METRICS_PORT: cannot listen on "
                          f"127.0.0.1:{port}: "), err


# ---------------------------------------------------------------------------------------------
# Progress and the target
# ---------------------------------------------------------------------------------------------


def test_minimize_the_first_evaluation_at_or_below_the_threshold_is_n_of_b():
    r = reporter()
    evaluations = ((10, 90.0), (20, 60.0), (30, 50.0), (40, 70.0), (50, 40.0))
    assert [r.evaluate(s, v) for s, v in evaluations] == [False, False, True, True, True]
    assert r.reached and r.done and r.steps_to_threshold == 30
    result = r.result()
    assert (result["steps"], result["reached"], result["value"]) == (30, True, 40.0)
    assert result["interpolated_steps"] == 30.0  # the line from (20, 60) meets 50 at 30


def test_maximize_the_first_evaluation_at_or_above_the_threshold_is_n_of_b():
    r = reporter(metric="accuracy", threshold=0.9, goal=Goal.maximize)
    assert not r.evaluate(10, 0.8)
    assert not r.evaluate(20, 0.85)
    assert r.evaluate(30, 0.95)
    result = r.result()
    assert (result["steps"], result["sfo"], result["goal"]) == (30, 240, "maximize")
    assert result["interpolated_steps"] == pytest.approx(25.0)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("goal", list(Goal))
def test_a_non_finite_value_is_unknown_and_never_reaches(value, goal):
    r = reporter(goal=goal)
    assert not r.evaluate(10, value)
    r.step(100)
    assert r.done and not r.reached
    result = r.result()
    assert result["value"] is None and result["reached"] is False and result["steps"] == 100
    assert result_problem(result) is None


def test_the_step_budget_ends_the_trial_censored():
    r = reporter()
    for s in range(1, 100):
        r.step(s, loss=1.0)
        assert not r.should_stop
    r.step(100)
    assert r.done and r.should_stop
    r.evaluate(100, 51.0)
    result = r.result()
    assert (result["reached"], result["steps"], result["value"]) == (False, 100, 51.0)
    assert result["interpolated_steps"] is None


def test_a_checkpointed_state_carries_the_trial_over_a_restart():
    first = reporter()
    first.step(20)
    first.evaluate(20, 60.0)
    state = json.loads(json.dumps(first.state()))  # what a checkpoint can hold
    second = reporter()
    assert second.resume(state) == 20
    second.step(30)
    assert second.evaluate(30, 40.0)
    result = second.result()
    assert result["steps"] == 30 and result["interpolated_steps"] == pytest.approx(25.0)
    assert result["wall_seconds"] >= state["wall_seconds"]
    with pytest.raises(ValueError, match=r"^state: unknown keys \['bogus'\]"):
        reporter().resume({"bogus": 1})


# ---------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------


def test_the_result_goes_to_the_file_and_as_the_last_line_of_stdout(tmp_path, capsys):
    result_file = tmp_path / "result.json"
    r = from_env(["--result-file", str(result_file)], ENV)
    print("the script's own output")
    r.step(10, generator=0.7)
    r.evaluate(10, 45.0)
    returned = r.finish(params=1234, dataset_size=1797,
                        optimizer={"name": "adam", "learning_rate": 1e-3, "beta1": 0.5,
                                   "beta2": 0.999})
    line = capsys.readouterr().out.splitlines()[-1]
    assert result_file.read_text() == line + "\n"
    assert json.loads(line) == returned
    assert line == json.dumps(returned, separators=(",", ":"))  # compact
    assert result_problem(returned, TrialKey(8, 1), sweep="s", max_steps=100) is None
    assert {k: returned[k] for k in ("batch_size", "seed", "reached", "steps", "metric",
                                     "value", "goal", "threshold", "max_steps", "params")} == {
        "batch_size": 8, "seed": 1, "reached": True, "steps": 10, "metric": "fid",
        "value": 45.0, "goal": "minimize", "threshold": 50.0, "max_steps": 100,
        "params": 1234}
    assert r.finish() is returned  # once only


def test_extra_keys_that_would_break_the_result_are_refused_before_writing(tmp_path):
    r = reporter(result_file=str(tmp_path / "result.json"))
    with pytest.raises(ValueError, match=r"^result: steps are the reporter's to set"):
        r.finish(steps=3)
    with pytest.raises(ValueError, match=r"^result: params: expected an integer or null"):
        r.finish(params=1.5)
    with pytest.raises(ValueError, match=r"^result: a NaN or infinite number"):
        r.finish(note=math.nan)
    with pytest.raises(ValueError, match=rf"over the {RESULT_LIMIT} a termination message"):
        r.finish(note="x" * RESULT_LIMIT)
    assert not (tmp_path / "result.json").exists()


def test_numpy_like_scalars_become_plain_numbers():
    class Scalar:  # numpy's and torch's scalars both have item()
        def __init__(self, v):
            self.v = v

        def item(self):
            return self.v

    r = reporter()
    r.step(5, loss=Scalar(0.25))
    r.evaluate(5, Scalar(40.0))
    assert r.finish(params=Scalar(10))["params"] == 10


def test_a_torch_optimizer_is_described_as_proposition_3_4_reads_it():
    class Adam:
        def __init__(self):
            self.defaults = {"lr": 1e-3, "betas": (0.5, 0.999), "eps": 1e-8}

    class RMSprop:
        def __init__(self):
            self.defaults = {"lr": 1e-4, "alpha": 0.99, "momentum": 0.0}

    assert optimizer_settings(Adam()) == {"name": "adam", "learning_rate": 1e-3, "beta1": 0.5,
                                          "beta2": 0.999}
    assert optimizer_settings(RMSprop()) == {"name": "rmsprop", "learning_rate": 1e-4,
                                             "beta1": 0.0, "beta2": 0.99}


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def test_the_metrics_are_served_for_the_sweeps_readers():
    port = free_port()
    env = {**ENV, "CRITBATCH_METRICS_PORT": str(port), "CRITBATCH_METRICS_HOST": "127.0.0.1"}
    r = TrialReporter.from_env([], env, prog="t")
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        before = scrape(url)[(8, 1)]
        assert (before.step, before.reached, before.finished, before.max_steps) \
            == (0, False, False, 100)
        r.step(20, generator=0.5, discriminator=1.25)
        r.evaluate(20, 49.5)
        r.finish()
        after = scrape(url)[(8, 1)]
        assert (after.step, after.value, after.reached, after.finished,
                after.steps_to_threshold) == (20, 49.5, True, True, 20)
        _, page = http_get(url)
        labels = 'batch_size="8",seed="1",sweep="s"'
        for line in (f"critbatch_trainer_samples_total{{{labels}}} 160.0",
                     f"critbatch_trainer_target_threshold{{{labels}}} 50.0",
                     'critbatch_trainer_loss{batch_size="8",name="generator",seed="1",'
                     'sweep="s"} 0.5',
                     'critbatch_trainer_loss{batch_size="8",name="discriminator",seed="1",'
                     'sweep="s"} 1.25'):
            assert line in page, page
    finally:
        r.close()
    assert http_get(f"http://127.0.0.1:{port}/metrics") == (0, "")


# ---------------------------------------------------------------------------------------------
# SIGTERM
# ---------------------------------------------------------------------------------------------

# A script whose steps take a while; it records whether a step was half done when the
# checkpoint callback ran.
SIGTERM_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from critbatch.reporter import TrialReporter
    state = {"done": 0, "inside": False}
    def save(step):
        print("checkpoint " + json.dumps({"step": step, **state}), file=sys.stderr, flush=True)
    r = TrialReporter.from_env(on_sigterm=save)
    step = 0
    while not r.done:
        state["inside"] = True
        time.sleep(0.01)
        step += 1
        state["done"], state["inside"] = step, False
        r.step(step)
        if step == 5:
            print("running", file=sys.stderr, flush=True)
    r.finish()
""")


def test_sigterm_checkpoints_at_a_step_boundary_and_exits_143_without_a_result(tmp_path):
    result_file = tmp_path / "result.json"
    env = {**ENV, "CRITBATCH_MAX_STEPS": "100000", "CRITBATCH_RESULT_FILE": str(result_file)}
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stderr.readline() == "running\n"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    (line,) = [x for x in err.splitlines() if x.startswith("checkpoint ")]
    seen = json.loads(line.removeprefix("checkpoint "))
    assert seen["step"] == seen["done"] >= 5 and seen["inside"] is False
    assert out == "" and not result_file.exists()


def test_sigterm_during_an_evaluation_waits_for_the_next_step():
    saved = []
    r = TrialReporter(TrialSettings.from_env(ENV), on_sigterm=saved.append, serve=False)
    try:
        r.step(10)
        os.kill(os.getpid(), signal.SIGTERM)  # the handler only sets a flag
        time.sleep(0.05)
        r.evaluate(10, 60.0)
        assert saved == []
        with pytest.raises(SystemExit) as exc:
            r.step(11)
        assert exc.value.code == 143 and saved == [11]
    finally:
        r.close()
    assert signal.getsignal(signal.SIGTERM) is not r._on_signal
