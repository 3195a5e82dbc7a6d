"""Bring your own trainer in the spec: the generic target (metric, threshold, goal), the
`fidThreshold` alias, `spec.trainer.command` and what it excludes, and the trial protocol's
environment; parse_sweep and the CRD agree on every rule."""

from __future__ import annotations

import copy

import pytest
import yaml
from crd_tools import ROOT, apply_defaults, cel_errors, openapi_schema, schema_errors
from sweeps import BASE, MINIMAL, sweep_manifest

from critbatch.protocol import ALL_VARS, METRIC_NAME, TrialSettings
from critbatch.spec import SpecError, evaluation_interval, parse_sweep
from critbatch.spec.parse_trainer import BUILTIN_ONLY
from critbatch.trainer_args import trainer_args, trial_env
from critbatch.vocabulary import Goal, TrialKey, reached

COMMAND = ["python", "-m", "mytrain", "--config", "/config/run.yaml"]
# A custom sweep: the user's program, on data of its own, maximizing validation accuracy.
CUSTOM = sweep_manifest(
    "custom", base=MINIMAL,
    trainer={"image": "registry.example/mytrain:1", "command": COMMAND,
             "dataset": {"pvc": "mydata", "path": "train", "size": 5000}, "gpus": 1},
    target={"metric": "val_accuracy", "goal": "maximize", "threshold": 0.9, "maxSteps": 2000,
            "evalEvery": 50},
    batchSizes=[32, 64, 128, 4096],
)


def custom(*, trainer=None, target=None, **spec) -> dict:
    """CUSTOM with spec fields replaced, trainer fields replaced and target fields merged."""
    body = sweep_manifest(base=CUSTOM, trainer=trainer, **spec)
    body["spec"]["target"].update(target or {})
    return body


def builtin(*, target=None, **kwargs) -> dict:
    body = sweep_manifest(**kwargs)
    body["spec"]["target"].update(target or {})
    return body


def crd_errors(manifest: dict) -> list[str]:
    return schema_errors(manifest) + cel_errors(manifest)


# ---------------------------------------------------------------------------------------------
# A custom sweep
# ---------------------------------------------------------------------------------------------


def test_a_custom_sweep_parses_with_no_optimizer_and_its_own_dataset():
    assert crd_errors(CUSTOM) == []
    s = parse_sweep(CUSTOM)
    assert s.trainer.custom and s.trainer.command == tuple(COMMAND)
    assert s.optimizer is None
    assert (s.target.metric, s.target.goal, s.target.threshold) == ("val_accuracy",
                                                                    Goal.maximize, 0.9)
    assert reached(0.95, s.target.threshold, s.target.goal)
    assert not reached(0.85, s.target.threshold, s.target.goal)
    d = s.trainer.dataset
    assert (d.name, d.pvc, d.path, d.known_size) == ("custom", "mydata", "train", 5000)
    assert s.trials_per_gpu == 1 and not parse_sweep(BASE).trainer.custom


def test_a_custom_datasets_size_is_only_what_the_spec_says():
    """No built-in dataset's size applies: 4096 > digits' 1797 is fine without a size."""
    body = custom(trainer={"dataset": {"pvc": "mydata"}})
    s = parse_sweep(body)
    assert s.trainer.dataset.known_size is None and 4096 in s.batch_sizes
    with pytest.raises(SpecError, match=r"^spec\.batchSizes\[2\]: batch size 128 exceeds the "
                                        r"custom dataset's 100 training examples"):
        parse_sweep(custom(trainer={"dataset": {"size": 100}}))


def test_a_custom_trainer_needs_no_dataset_and_no_inception_weights():
    body = custom()
    del body["spec"]["trainer"]["dataset"]
    s = parse_sweep(body)
    assert (s.trainer.dataset.pvc, s.trainer.inception) == (None, None)
    assert crd_errors(body) == []


def test_the_crds_defaults_add_no_built_in_trainer_field_to_a_custom_sweep():
    """The operator parses the object as the API server stored it, defaults applied: a default
    of a built-in-only field would make every custom sweep invalid on a cluster."""
    stored = apply_defaults(openapi_schema(), CUSTOM)
    trainer = stored["spec"]["trainer"]
    assert not set(BUILTIN_ONLY) & set(trainer), trainer
    assert "name" not in trainer.get("dataset", {}) and "optimizer" not in stored["spec"]
    assert parse_sweep(stored) == parse_sweep(CUSTOM)
    assert parse_sweep(apply_defaults(openapi_schema(), BASE)) == parse_sweep(BASE)


def test_estimate_targets_of_a_custom_sweep_state_every_value():
    full = {"optimizer": "adam", "learningRate": 1e-4, "beta1": 0.9, "beta2": 0.999}
    s = parse_sweep(custom(estimate={"targets": [full]}))
    assert s.estimate[0].setting().beta1 == 0.9
    # The built-in trainer fills the betas from its model's defaults.
    s = parse_sweep(sweep_manifest(estimate={"targets": [{"optimizer": "adam",
                                                          "learningRate": 1e-4}]}))
    assert (s.estimate[0].beta1, s.estimate[0].beta2) == (0.5, 0.999)


def test_trainer_args_refuse_a_custom_sweep():
    with pytest.raises(ValueError, match=r"spec\.trainer\.command"):
        trainer_args(parse_sweep(CUSTOM), TrialKey(32, 0), metrics_port=0, checkpoint_dir=None)


# ---------------------------------------------------------------------------------------------
# Rejected by parse_sweep and by the CRD, with the field named
# ---------------------------------------------------------------------------------------------

_BUILTIN_VALUES = {"model": "biggan", "imageSize": 32, "channels": 3, "width": 32, "zDim": 64,
                   "emaStart": 10, "inception": {"file": "/w.pth"}, "device": "cpu",
                   "cudaGraph": False, "microBatch": 8, "recomputeActivations": False,
                   "fusedAttention": False, "bf16": False,
                   "reproducibleCPU": False, "checkpointEvery": 0}

INVALID = [
    # (why, manifest, what parse_sweep names, what the CRD names)
    *[(f"{key} with a command", custom(trainer={key: value}), f"spec.trainer.{key}",
       f"spec.trainer.{key}: applies only to the built-in trainer")
      for key, value in _BUILTIN_VALUES.items()],
    ("a dataset name with a command", custom(trainer={"dataset": {"name": "digits"}}),
     "spec.trainer.dataset.name", "spec.trainer.dataset.name"),
    ("an optimizer with a command", custom(optimizer={"name": "adam"}), "spec.optimizer",
     "spec.optimizer: applies only"),
    ("an empty optimizer with a command", custom(optimizer={}), "spec.optimizer",
     "spec.optimizer: applies only"),
    ("evalSamples with a command", custom(target={"evalSamples": 100}),
     "spec.target.evalSamples", "spec.target.evalSamples"),
    ("two trials per GPU with a command", custom(trialsPerGPU=2), "spec.trialsPerGPU",
     "spec.trialsPerGPU: must be 1 with spec.trainer.command"),
    ("an estimate without betas with a command",
     custom(estimate={"targets": [{"optimizer": "adam", "learningRate": 1e-4, "beta1": 0.5}]}),
     "spec.estimate.targets[0].beta2", "spec.estimate.targets"),
    ("an empty command", custom(trainer={"command": []}), "spec.trainer.command",
     "spec.trainer.command"),
    ("a shell string for a command", custom(trainer={"command": "python train.py"}),
     "spec.trainer.command", "spec.trainer.command"),
    ("an empty argument", custom(trainer={"command": ["python", ""]}),
     "spec.trainer.command[1]", "spec.trainer.command[1]"),
    ("a NUL in an argument", custom(trainer={"command": ["python", "a\0b"]}),
     "spec.trainer.command[1]", "spec.trainer.command[1]"),
    ("a number for an argument", custom(trainer={"command": ["python", 3]}),
     "spec.trainer.command[1]", "spec.trainer.command[1]"),
    ("an argument too long", custom(trainer={"command": ["python", "x" * 4097]}),
     "spec.trainer.command[1]", "spec.trainer.command[1]"),
    ("65 arguments", custom(trainer={"command": ["python"] * 65}), "spec.trainer.command",
     "spec.trainer.command"),
    ("a protocol variable in env", custom(trainer={"env": [
        {"name": "OMP_NUM_THREADS", "value": "1"}, {"name": "CRITBATCH_SEED", "value": "3"}]}),
     "spec.trainer.env[1].name", "spec.trainer.env"),
    ("a protocol variable in the built-in trainer's env",
     sweep_manifest(trainer={"env": [{"name": "CRITBATCH_TARGET_THRESHOLD", "value": "9"}]}),
     "spec.trainer.env[0].name", "spec.trainer.env"),
    ("another metric for the built-in trainer", builtin(target={"metric": "val_loss"}),
     "spec.target.metric", "spec.target.metric: the built-in trainer measures fid only"),
    ("maximizing with the built-in trainer", builtin(target={"goal": "maximize"}),
     "spec.target.goal", "spec.target.goal: the built-in trainer minimizes"),
    ("a metric that is not a name", custom(target={"metric": "val loss"}), "spec.target.metric",
     "spec.target.metric"),
    ("an unknown goal", custom(target={"goal": "up"}), "spec.target.goal", "spec.target.goal"),
    ("threshold and fidThreshold", builtin(target={"threshold": 50}),
     "spec.target.fidThreshold", "spec.target.fidThreshold: the older name"),
    ("fidThreshold for another metric", custom(target={"fidThreshold": 0.9,
                                                       "threshold": None}),
     "spec.target.fidThreshold", "spec.target.fidThreshold: only for metric fid"),
    ("no threshold", builtin(target={"fidThreshold": None}), "spec.target.threshold",
     "spec.target.threshold: required"),
    ("a FID threshold of 0", builtin(target={"fidThreshold": None, "threshold": 0}),
     "spec.target.threshold", "spec.target.threshold: must be > 0 for metric fid"),
]


def _without_nulls(body: dict) -> dict:
    """The manifest as the API server sees it: a null field is an unset one."""
    body = copy.deepcopy(body)
    target = body["spec"]["target"]
    body["spec"]["target"] = {k: v for k, v in target.items() if v is not None}
    return body


@pytest.mark.parametrize(("why", "manifest", "parsed", "crd"), INVALID,
                         ids=[c[0] for c in INVALID])
def test_parse_sweep_and_the_crd_reject_with_the_field_named(why, manifest, parsed, crd):
    with pytest.raises(SpecError) as exc:
        parse_sweep(manifest)
    assert str(exc.value).startswith(parsed), str(exc.value)
    manifest = _without_nulls(manifest)
    schema = schema_errors(manifest)
    errors = schema or cel_errors(manifest)
    assert any(e.startswith(crd) for e in errors), (why, errors)


def test_a_zero_or_negative_threshold_is_fine_for_a_metric_other_than_fid():
    for value in (0, -3.5):
        body = custom(target={"metric": "neg_log_likelihood", "goal": "minimize",
                              "threshold": value})
        assert parse_sweep(body).target.threshold == value
        assert crd_errors(body) == []


def test_the_crd_names_what_the_parser_excludes_from_a_custom_sweep():
    """One rule per built-in-only field, and the protocol's variables as the parser has them."""
    trainer = openapi_schema()["properties"]["spec"]["properties"]["trainer"]
    rules_ = [r["rule"] for r in trainer["x-kubernetes-validations"]]
    for key in BUILTIN_ONLY:
        assert f"!has(self.command) || !has(self.{key})" in rules_
        assert key in trainer["properties"], key
    (env_rule,) = [r for r in rules_ if "self.env.all" in r]
    assert env_rule.count("'CRITBATCH_") == len(ALL_VARS)
    assert all(f"'{v}'" in env_rule for v in ALL_VARS)


def test_the_crds_target_is_the_protocols():
    target = openapi_schema()["properties"]["spec"]["properties"]["target"]["properties"]
    assert target["metric"]["pattern"] == f"^{METRIC_NAME.pattern}$"
    assert target["metric"]["default"] == "fid"
    assert target["goal"]["enum"] == list(Goal) and target["goal"]["default"] == Goal.minimize
    command = openapi_schema()["properties"]["spec"]["properties"]["trainer"]["properties"][
        "command"]
    assert (command["maxItems"], command["items"]["maxLength"]) == (64, 4096)


# ---------------------------------------------------------------------------------------------
# fidThreshold, the older name of threshold
# ---------------------------------------------------------------------------------------------


def _fid_examples() -> list[tuple[str, dict]]:
    """The example sweeps whose target is a FID, the one metric fidThreshold names."""
    found = []
    for path in sorted((ROOT / "examples").rglob("*.yaml")):
        for i, doc in enumerate(d for d in yaml.safe_load_all(path.read_text()) if d):
            if doc.get("kind") == "CriticalBatchSweep" and doc["spec"]["target"].get(
                    "metric", "fid") == "fid":
                found.append((f"{path.relative_to(ROOT)}#{i}", doc))
    return found


def _renamed(body: dict, old: str, new: str) -> dict:
    body = copy.deepcopy(body)
    target = body["spec"]["target"]
    body["spec"]["target"] = {(new if k == old else k): v for k, v in target.items()}
    return body


@pytest.mark.parametrize(("where", "manifest"), [("tests/operator/sweep.yaml", BASE),
                                                  *_fid_examples()])
def test_fid_threshold_and_threshold_parse_to_the_same_sweep(where, manifest):
    if "threshold" in manifest["spec"]["target"]:
        old, new = _renamed(manifest, "threshold", "fidThreshold"), manifest
    else:
        old, new = manifest, _renamed(manifest, "fidThreshold", "threshold")
    assert "fidThreshold" in old["spec"]["target"] and "threshold" in new["spec"]["target"]
    assert parse_sweep(old) == parse_sweep(new), where
    assert crd_errors(old) == [] and crd_errors(new) == [], where


def test_renaming_fid_threshold_is_no_change_to_a_running_sweep():
    renamed = _renamed(BASE, "fidThreshold", "threshold")
    assert cel_errors(renamed, BASE) == []
    assert cel_errors(BASE, renamed) == []
    changed = copy.deepcopy(renamed)
    changed["spec"]["target"]["threshold"] = 40
    assert "spec.target is immutable: create a new sweep" in cel_errors(changed, BASE)


# ---------------------------------------------------------------------------------------------
# The trial protocol's environment
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("manifest", [CUSTOM, BASE, MINIMAL], ids=["custom", "base", "minimal"])
def test_trial_env_round_trips_through_the_protocol(manifest):
    sweep = parse_sweep(manifest)
    env = trial_env(sweep, TrialKey(64, 1), metrics_port=9100, result_file="/out/result.json",
                    checkpoint_dir="/checkpoints/b64-s1")
    assert set(env) <= set(ALL_VARS)
    got = TrialSettings.from_env(env)
    assert got.key == TrialKey(64, 1) and got.sweep == sweep.name
    t = sweep.target
    assert (got.metric, got.threshold, got.goal, got.max_steps) == (
        t.metric, t.threshold, t.goal, t.max_steps)
    assert got.eval_every == evaluation_interval(sweep)
    assert (got.metrics_port, got.metrics_host) == (9100, "0.0.0.0")
    assert (got.result_file, got.checkpoint_dir) == ("/out/result.json", "/checkpoints/b64-s1")


def test_trial_env_without_files_or_port_and_with_a_host():
    sweep = parse_sweep(CUSTOM)
    env = trial_env(sweep, TrialKey(32, 0), metrics_port=0, result_file=None,
                    checkpoint_dir=None, metrics_host="127.0.0.1")
    got = TrialSettings.from_env(env)
    assert (got.result_file, got.checkpoint_dir, got.metrics_port) == (None, None, 0)
    assert got.metrics_host == "127.0.0.1" and got.eval_every == 50
    # An unset evalEvery is still the sweep's interval, where the planner expects evaluations.
    body = custom()
    del body["spec"]["target"]["evalEvery"]
    got = TrialSettings.from_env(trial_env(parse_sweep(body), TrialKey(32, 0), metrics_port=0,
                                           result_file=None, checkpoint_dir=None))
    assert got.eval_every == evaluation_interval(parse_sweep(body)) == 100

