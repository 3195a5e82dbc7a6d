"""The built-in trainer speaks the trial protocol: the CRITBATCH_* variables are the defaults of
its flags (docs/contracts.md), and its metrics carry the protocol's target series."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from critbatch import protocol
from critbatch.protocol import TrialSettings
from critbatch.vocabulary import Goal, TrialKey
from critbatch_trainer import group
from critbatch_trainer.__main__ import main
from critbatch_trainer.config import ConfigError, parse_args
from critbatch_trainer.metrics import TrainerMetrics
from critbatch_trainer.settings import GROUP_SIZE_ENV

# What a sweep gives one trial (TrialSettings.env is the inverse of the protocol's reader).
TRIAL = TrialSettings(batch_size=16, seed=3, max_steps=120, threshold=45.5, metric="fid",
                      goal=Goal.minimize, metrics_port=9123, metrics_host="127.0.0.1",
                      result_file="trial/result.json", checkpoint_dir="trial/ckpt",
                      eval_every=30, sweep="mnist-adam")


def test_every_protocol_variable_is_the_default_of_its_flag() -> None:
    c = parse_args([], TRIAL.env())
    assert (c.batch_size, c.seed, c.max_steps, c.fid_threshold) == (16, 3, 120, 45.5)
    assert (c.metrics_port, c.metrics_host, c.eval_every, c.sweep) == (9123, "127.0.0.1", 30,
                                                                       "mnist-adam")
    assert (c.termination_log, c.checkpoint_dir) == ("trial/result.json", "trial/ckpt")


def test_flags_and_the_config_file_override_the_variables(tmp_path: Path) -> None:
    f = tmp_path / "trial.yaml"
    f.write_text("max_steps: 60\nsweep: from-file\n")
    c = parse_args(["--config", str(f), "--seed", "7", "--checkpoint-dir", "",
                    "--termination-log", str(tmp_path / "r")], TRIAL.env())
    assert (c.seed, c.max_steps, c.sweep) == (7, 60, "from-file")
    assert c.checkpoint_dir is None and c.termination_log == str(tmp_path / "r")
    assert (c.batch_size, c.fid_threshold) == (16, 45.5)


def test_only_some_variables_set_and_flags_for_the_rest() -> None:
    env = {protocol.TARGET_THRESHOLD: "80", protocol.MAX_STEPS: "50",
           protocol.CHECKPOINT_DIR: "", protocol.RESULT_FILE: ""}
    c = parse_args(["--batch-size", "4", "--termination-log", ""], env)
    assert (c.batch_size, c.seed, c.fid_threshold, c.max_steps) == (4, 0, 80.0, 50)
    assert c.checkpoint_dir is None and c.termination_log is None  # empty: not set
    with pytest.raises(ConfigError, match=r"^batch-size: required \(or CRITBATCH_BATCH_SIZE\)"):
        parse_args([], env)


@pytest.mark.parametrize("variable,value,message", [
    (protocol.TARGET_METRIC, "accuracy",
     "CRITBATCH_TARGET_METRIC: the built-in trainer measures fid, got 'accuracy'"),
    (protocol.TARGET_GOAL, "maximize",
     "CRITBATCH_TARGET_GOAL: the built-in trainer's FID is minimized, got 'maximize'"),
])
def test_a_target_the_trainer_cannot_measure_exits_2(variable, value, message, monkeypatch,
                                                     capsys) -> None:
    for name, text in TRIAL.env().items():
        monkeypatch.setenv(name, text)
    monkeypatch.setenv(variable, value)
    assert main(["--termination-log", ""]) == 2
    assert capsys.readouterr().err.strip() == f"critbatch-trainer: error: {message}"


@pytest.mark.parametrize("variable,value", [
    (protocol.BATCH_SIZE, "sixteen"), (protocol.BATCH_SIZE, "0"), (protocol.SEED, "-1"),
    (protocol.MAX_STEPS, "1e3"), (protocol.TARGET_THRESHOLD, "nan"),
    (protocol.METRICS_PORT, "70000"), (protocol.METRICS_HOST, "bad host"),
    (protocol.EVAL_EVERY, "0"), (protocol.VERSION_VAR, "2"),
    (protocol.TARGET_THRESHOLD, "-3"),  # a number the protocol reads, the trainer refuses
])
def test_a_malformed_variable_exits_2_naming_it(variable, value, monkeypatch, capsys) -> None:
    for name, text in TRIAL.env().items():
        monkeypatch.setenv(name, text)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"^{variable}"):
        parse_args([])
    assert main(["--termination-log", ""]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"critbatch-trainer: error: {variable}")


def test_every_set_variable_is_checked_even_where_a_flag_overrides_it() -> None:
    env = {**TRIAL.env(), protocol.BATCH_SIZE: "x"}
    with pytest.raises(ConfigError, match=protocol.BATCH_SIZE):
        parse_args(["--batch-size", "8"], env)


def test_a_group_with_protocol_variables_gives_each_child_its_own_trial(monkeypatch,
                                                                          tmp_path: Path) -> None:
    """The parent's batch size and seed do not clash with --trials; its port, result file and
    checkpoint directory are the group's; each child runs its own trial."""
    ckpt = tmp_path / "ckpt"
    env = TrialSettings(batch_size=64, seed=9, max_steps=120, threshold=45.5, metrics_port=9123,
                        result_file=str(tmp_path / "group.result"),
                        checkpoint_dir=str(ckpt)).env()
    rest = ["--dataset", "digits"]
    trials, rest = group.split_trials([*rest, "--trials", "16:0,4:1"])
    keys = group.group_keys(trials)
    assert not group.given_flags(rest) & {"batch_size", "seed"}
    parent = parse_args([*rest, "--batch-size", "16", "--seed", "0"], env)  # as group.run does
    assert (parent.metrics_port, parent.checkpoint_dir) == (9123, str(ckpt))
    child_env = {**env, GROUP_SIZE_ENV: str(len(keys))}
    for key in keys:
        result = tmp_path / f"{key.name}.result"
        argv = group.child_argv(rest, key, cfg=parent, result_file=result, threads=None)
        child = parse_args(argv[3:], child_env)
        assert TrialKey(child.batch_size, child.seed) == key
        assert (child.metrics_port, child.termination_log) == (0, str(result))
        assert child.checkpoint_dir == str(ckpt / key.name)
        assert (child.max_steps, child.fid_threshold) == (120, 45.5)  # shared: still read


def test_a_group_child_never_takes_the_groups_own_variables() -> None:
    env = {**TRIAL.env(), GROUP_SIZE_ENV: "2"}
    c = parse_args(["--batch-size", "4", "--termination-log", ""], env)
    assert (c.seed, c.metrics_port, c.checkpoint_dir) == (0, 0, None)
    assert (c.sweep, c.max_steps, c.eval_every) == ("mnist-adam", 120, 30)
    with pytest.raises(ConfigError, match=r"^batch-size: required"):
        parse_args([], env)


def test_trials_with_a_batch_size_variable_is_no_clash(monkeypatch, capsys) -> None:
    """`--trials` refuses --batch-size and --seed flags, not the variables a sweep sets."""
    for name, text in TRIAL.env().items():
        monkeypatch.setenv(name, text)
    assert main(["--trials", "16:0,4:1", "--dataset", "lsun"]) == 2  # fails later, on purpose
    assert capsys.readouterr().err.strip() == ("critbatch-trainer: error: data-path: required "
                                               "for dataset 'lsun'")
    assert main(["--trials", "16:0", "--seed", "1"]) == 2
    assert "trials: cannot be combined with --seed" in capsys.readouterr().err


def test_the_target_value_series_is_the_fid_with_the_same_labels() -> None:
    m = TrainerMetrics("s", 16, 3)
    m.evaluation(123.25)
    samples = {s.name: s for f in text_string_to_metric_families(
        generate_latest(m.registry).decode()) for s in f.samples}
    fid, value = samples["critbatch_trainer_fid"], samples["critbatch_trainer_target_value"]
    assert value.value == fid.value == 123.25
    assert value.labels == fid.labels == {"sweep": "s", "batch_size": "16", "seed": "3"}
