"""The CRD: its shape, its schema (jsonschema), its CEL rules (cel-python, with oldSelf), and the
agreement between the CRD and `parse_sweep` on valid and invalid manifests.

Untested here (needs a real API server): CEL cost estimation, ratcheting, the rendering of
`fieldPath`/`reason`, printer-column output and structural-schema publishing rules beyond the
checks below.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from crd_tools import (
    ROOT,
    apply_defaults,
    cel_errors,
    compile_rule,
    is_transition_rule,
    load_crd,
    openapi_schema,
    rules,
    schema_errors,
    to_json_schema,
)
from sweeps import BASE, MINIMAL, sweep_manifest

from critbatch.spec import SpecError, parse_sweep

# ---------------------------------------------------------------------------------------------
# Shape
# ---------------------------------------------------------------------------------------------


def test_names_scope_and_version_are_the_designed_ones():
    crd = load_crd()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "criticalbatchsweeps.critbatch.dev"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["singular"]) == (
        "CriticalBatchSweep", "criticalbatchsweeps", "criticalbatchsweep")
    assert names["shortNames"] == ["cbs"]
    assert "critbatch" in names["categories"]
    assert crd["spec"]["scope"] == "Namespaced"
    (v,) = crd["spec"]["versions"]
    assert (v["name"], v["served"], v["storage"]) == ("v1alpha1", True, True)
    assert v["subresources"] == {"status": {}}


def test_printer_columns_show_readiness_progress_and_b_star():
    (v,) = load_crd()["spec"]["versions"]
    cols = {c["name"]: c["jsonPath"] for c in v["additionalPrinterColumns"]}
    assert cols["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert cols["Phase"] == ".status.phase"
    assert cols["Trials"] == ".status.progress"
    assert cols["B*"] == ".status.criticalBatchSize.mostProbable"
    assert cols["Resolved"] == ".status.criticalBatchSize.resolved"
    assert cols["Plausible"] == ".status.criticalBatchSize.plausible"
    assert cols["Measured"] == ".status.criticalBatchSize.measured"
    assert cols["Fitted"] == ".status.criticalBatchSize.fitted"
    assert cols["Age"] == ".metadata.creationTimestamp"


def _walk(node, path="$"):
    yield path, node
    for key, sub in (node.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural_every_node_has_a_type():
    for path, node in _walk(openapi_schema()):
        if node.get("x-kubernetes-int-or-string"):
            continue
        assert "type" in node, f"{path} has no type"
        if node["type"] == "object" and not (node.get("properties")
                                             or node.get("additionalProperties")):
            assert node.get("x-kubernetes-preserve-unknown-fields") or path == "$.metadata", path


def test_defaults_are_valid_under_their_own_schema():
    for path, node in _walk(openapi_schema()):
        if "default" in node:
            assert schema_errors_for(node, node["default"]) == [], path


def schema_errors_for(node, value):
    return [e.message for e in jsonschema.Draft4Validator(to_json_schema(node)).iter_errors(
        value)]


def test_every_cel_rule_compiles_and_has_a_message_naming_a_field():
    found = list(rules())
    assert len(found) >= 12
    for path, _, rule in found:
        compile_rule(rule["rule"])
        assert rule["message"].startswith(("spec.", "set exactly one")), (path, rule)


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------


def test_the_example_sweep_is_valid():
    assert schema_errors(BASE) == []
    assert cel_errors(BASE) == []


INVALID_FOR_SCHEMA = [
    ("empty image", sweep_manifest(trainer={"image": ""}), "image"),
    ("unknown model", sweep_manifest(trainer={"model": "stylegan"}), "model"),
    ("zero batch size", sweep_manifest(batchSizes=[0, 4]), "batchSizes[0]"),
    ("batch size a string", sweep_manifest(batchSizes=["8"]), "batchSizes[0]"),
    ("negative threshold", sweep_manifest(target={"threshold": -1, "maxSteps": 10}), "threshold"),
    ("negative FID threshold", sweep_manifest(target={"fidThreshold": -1, "maxSteps": 10}),
     "fidThreshold"),
    ("no maxSteps", sweep_manifest(target={"threshold": 50}), "target"),
    ("command not a list", sweep_manifest(trainer={"command": "python train.py"}), "command"),
    ("unknown goal", sweep_manifest(target={"threshold": 5, "maxSteps": 10, "goal": "up"}),
     "goal"),
    ("parallelism 0", sweep_manifest(parallelism=0), "parallelism"),
    ("trialsPerGPU 0", sweep_manifest(trialsPerGPU=0), "trialsPerGPU"),
    ("trialsPerGPU 9", sweep_manifest(trialsPerGPU=9), "trialsPerGPU"),
    ("seeds too many", sweep_manifest(seeds=100), "seeds"),
    ("unknown optimizer", sweep_manifest(optimizer={"name": "sgd"}), "optimizer.name"),
    ("beta1 = 1", sweep_manifest(optimizer={"generator": {"beta1": 1.0}}), "beta1"),
    ("learning rate 0", sweep_manifest(optimizer={"generator": {"learningRate": 0}}),
     "learningRate"),
    ("unknown spec field", sweep_manifest(batchSize=4), "spec"),
    ("bad Prometheus URL", sweep_manifest(metrics={"prometheusURL": "prom:9090"}), "prometheusURL"),
    ("unknown metrics source", sweep_manifest(metrics={"source": "statsd"}), "source"),
    ("gpus negative", sweep_manifest(trainer={"gpus": -1}), "gpus"),
    ("image size 4", sweep_manifest(trainer={"imageSize": 4}), "imageSize"),
    ("checkpoint claim not a name", sweep_manifest(trainer={"checkpoints": {"pvc": "My_Claim"}}),
     "pvc"),
    ("checkpoints without a claim", sweep_manifest(trainer={"checkpoints": {}}), "pvc"),
    ("width 0", sweep_manifest(trainer={"width": 0}), "width"),
    ("zDim above 1024", sweep_manifest(trainer={"zDim": 4096}), "zDim"),
    ("emaStart negative", sweep_manifest(trainer={"model": "biggan", "emaStart": -1}), "emaStart"),
    ("unknown strategy", sweep_manifest(strategy={"type": "random"}), "strategy.type"),
    ("maxTrials 0", sweep_manifest(strategy={"type": "adaptive", "maxTrials": 0}), "maxTrials"),
]


@pytest.mark.parametrize(("why", "manifest", "field"), INVALID_FOR_SCHEMA,
                         ids=[c[0] for c in INVALID_FOR_SCHEMA])
def test_schema_rejects_and_parse_sweep_agrees(why, manifest, field):
    errors = schema_errors(manifest) + cel_errors_safe(manifest)
    assert errors, why
    if field:
        assert any(field in e for e in errors), errors
    with pytest.raises(SpecError) as exc:
        parse_sweep(manifest)
    last = (field or "threshold").split(".")[-1].split("[")[0]
    assert last in str(exc.value) or "spec" in str(exc.value)
    assert str(exc.value).startswith("spec"), str(exc.value)


def cel_errors_safe(manifest):
    try:
        return cel_errors(manifest)
    except Exception:  # a rule touching a field the schema already rejected
        return []


@pytest.mark.parametrize(("claim", "valid"), [
    ("ckpt", True), ("sweep-checkpoints", True), ("ckpt.fast-1", True), ("a" * 253, True),
    ("a" * 254, False), ("Ckpt", False), ("ckpt_1", False), ("-ckpt", False), ("ckpt-", False),
    ("ckpt..a", False), ("ckpt.-a", False), ("ckpt.", False), ("", False),
])
def test_the_crd_and_parse_sweep_agree_on_checkpoint_claim_names(claim, valid):
    manifest = sweep_manifest(trainer={"checkpoints": {"pvc": claim}})
    assert (schema_errors(manifest) == []) is valid, schema_errors(manifest)
    if valid:
        assert parse_sweep(manifest).trainer.checkpoints.pvc == claim
    else:
        with pytest.raises(SpecError, match=r"^spec\.trainer\.checkpoints\.pvc: "):
            parse_sweep(manifest)


# ---------------------------------------------------------------------------------------------
# CEL rules, each against a good and a bad object
# ---------------------------------------------------------------------------------------------


def _without(body: dict, *path: str) -> dict:
    """A copy of `body` with spec.<path> removed."""
    body = copy.deepcopy(body)
    node = body["spec"]
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return body


# A custom trainer: the user's program maximizing its validation accuracy.
CUSTOM = sweep_manifest(
    "custom", base=MINIMAL, trainer={"command": ["python", "train.py"]},
    target={"metric": "val_accuracy", "goal": "maximize", "threshold": 0.9, "maxSteps": 2000})


def custom(**spec) -> dict:
    trainer = spec.pop("trainer", None)
    body = sweep_manifest(base=CUSTOM, trainer=trainer, **spec)
    body["spec"]["trainer"] = {k: v for k, v in body["spec"]["trainer"].items() if v is not None}
    return body


CEL_CASES = [
    # (id, new manifest, old manifest or None, message fragment expected or None)
    ("unique batch sizes ok", sweep_manifest(batchSizes=[2, 4, 8]), None, None),
    ("duplicate batch sizes", sweep_manifest(batchSizes=[2, 4, 2]), None, "must be unique"),
    ("a zero batch size", sweep_manifest(batchSizes=[0, 4]), None, "must be positive"),
    ("both list and range", sweep_manifest(batchSizeRange={"min": 2, "max": 8}), None,
     "exactly one"),
    ("neither list nor range", {**BASE, "spec": {k: v for k, v in BASE["spec"].items()
                                                 if k != "batchSizes"}}, None, "exactly one"),
    ("range min > max", {**BASE, "spec": {**{k: v for k, v in BASE["spec"].items()
                                             if k != "batchSizes"},
                                          "batchSizeRange": {"min": 64, "max": 8}}},
     None, "must be >= min"),
    ("FID threshold 0", sweep_manifest(target={"fidThreshold": 0, "maxSteps": 10}), None,
     "fidThreshold: must be > 0"),
    ("threshold 0 for fid", sweep_manifest(target={"threshold": 0, "maxSteps": 10}), None,
     "threshold: must be > 0 for metric fid"),
    ("threshold int 50 is a double > 0",
     sweep_manifest(target={"threshold": 50, "maxSteps": 10}), None, None),
    ("no threshold", sweep_manifest(target={"maxSteps": 10}), None, "threshold: required"),
    ("both names of the threshold", sweep_manifest(target={"threshold": 5, "fidThreshold": 5,
                                                           "maxSteps": 10}),
     None, "fidThreshold: the older name"),
    ("fidThreshold for accuracy", custom(target={"metric": "accuracy", "fidThreshold": 0.5,
                                                 "maxSteps": 10}), None, "only for metric fid"),
    ("accuracy from the built-in trainer",
     sweep_manifest(target={"metric": "accuracy", "threshold": 0.5, "maxSteps": 10}), None,
     "metric: the built-in trainer measures fid only"),
    ("maximize with the built-in trainer",
     sweep_manifest(target={"goal": "maximize", "threshold": 5, "maxSteps": 10}), None,
     "goal: the built-in trainer minimizes"),
    ("a custom trainer maximizing accuracy", CUSTOM, None, None),
    *[(f"{key} with a command", custom(trainer={key: value}), None,
       f"spec.trainer.{key}: applies only") for key, value in (
        ("model", "dcgan"), ("imageSize", 32), ("channels", 3), ("width", 16), ("zDim", 32),
        ("emaStart", 0), ("inception", {"file": "/w.pth"}), ("device", "cpu"),
        ("cudaGraph", False), ("microBatch", 8), ("recomputeActivations", False),
        ("fusedAttention", False), ("bf16", False), ("reproducibleCPU", False),
        ("checkpointEvery", 5))],
    ("a dataset name with a command", custom(trainer={"dataset": {"name": "digits"}}), None,
     "spec.trainer.dataset.name: applies only"),
    ("an optimizer with a command", custom(optimizer={"name": "adam"}), None,
     "spec.optimizer: applies only"),
    ("evalSamples with a command", custom(target={"metric": "accuracy", "goal": "maximize",
                                                  "threshold": 0.5, "maxSteps": 10,
                                                  "evalSamples": 10}),
     None, "evalSamples: applies only"),
    ("two trials per GPU with a command", custom(trialsPerGPU=2), None, "trialsPerGPU: must be 1"),
    ("an estimate of a custom sweep without betas",
     custom(estimate={"targets": [{"optimizer": "adam", "learningRate": 1e-4}]}), None,
     "spec.estimate.targets: with spec.trainer.command"),
    ("an estimate of a custom sweep with betas",
     custom(estimate={"targets": [{"optimizer": "adam", "learningRate": 1e-4, "beta1": 0.9,
                                   "beta2": 0.99}]}), None, None),
    ("a protocol variable in env", sweep_manifest(trainer={"env": [{"name": "CRITBATCH_SEED"}]}),
     None, "spec.trainer.env: CRITBATCH_PROTOCOL"),
    ("other variables in env", sweep_manifest(trainer={"env": [{"name": "CRITBATCH_THREADS"}]}),
     None, None),
    ("evalEvery above maxSteps", sweep_manifest(target={"threshold": 5, "maxSteps": 10,
                                                        "evalEvery": 20}), None, "evalEvery"),
    ("real dataset without a path", sweep_manifest(trainer={"dataset": {"name": "lsun"}}), None,
     "needs a path or a pvc"),
    ("reference with both", sweep_manifest(reference={"sweep": "a", "noiseRatio": 2.0}), None,
     "exactly one of sweep and noiseRatio"),
    ("reference by name", sweep_manifest(reference={"sweep": "a"}), None, None),
    ("four trials per GPU", sweep_manifest(trialsPerGPU=4), None, None),
    ("a CUDA graph for dcgan", sweep_manifest(trainer={"cudaGraph": True}), None, None),
    ("a CUDA graph for biggan", sweep_manifest(trainer={"model": "biggan", "cudaGraph": True}),
     None, None),
    ("a CUDA graph with adabelief", sweep_manifest(trainer={"cudaGraph": True},
                                                   optimizer={"name": "adabelief"}),
     None, "cudaGraph: not with adabelief"),
    ("micro-batches for biggan", sweep_manifest(trainer={"model": "biggan", "microBatch": 64}),
     None, None),
    ("micro-batches for dcgan", sweep_manifest(trainer={"microBatch": 64}), None,
     "microBatch: not with dcgan"),
    ("micro-batches on two GPUs",
     sweep_manifest(trainer={"model": "wgan-gp", "gpus": 2, "microBatch": 64}), None,
     "microBatch: only for trials of one worker process"),
    ("change the micro-batch", sweep_manifest(trainer={"model": "biggan", "microBatch": 64}),
     sweep_manifest(trainer={"model": "biggan", "microBatch": 32}), "microBatch is immutable"),
    ("drop the micro-batch", BASE, sweep_manifest(trainer={"model": "biggan", "microBatch": 32}),
     "microBatch is immutable"),
    ("recompute biggan's activations",
     sweep_manifest(trainer={"model": "biggan", "recomputeActivations": True}), None, None),
    ("recompute dcgan's activations", sweep_manifest(trainer={"recomputeActivations": True}),
     None, "recomputeActivations: only biggan"),
    ("recompute activations on two GPUs",
     sweep_manifest(trainer={"model": "biggan", "gpus": 2, "recomputeActivations": True}), None,
     "recomputeActivations: only for trials of one worker process"),
    ("stop recomputing activations (the same training)",
     sweep_manifest(trainer={"model": "biggan"}),
     sweep_manifest(trainer={"model": "biggan", "recomputeActivations": True}), None),
    ("fuse biggan's attention",
     sweep_manifest(trainer={"model": "biggan", "fusedAttention": True}), None, None),
    ("fuse dcgan's attention", sweep_manifest(trainer={"fusedAttention": True}), None,
     "fusedAttention: only biggan"),
    ("fuse the attention of a running sweep (other rounding)",
     sweep_manifest(trainer={"model": "biggan", "fusedAttention": True}),
     sweep_manifest(trainer={"model": "biggan"}), "fusedAttention is immutable"),
    ("turn bf16 on", sweep_manifest(trainer={"bf16": True}), BASE, "bf16 is immutable"),
    ("turn reproducible CPU numerics on", sweep_manifest(trainer={"reproducibleCPU": True}), BASE,
     "reproducibleCPU is immutable"),
    ("keep reproducible CPU numerics", sweep_manifest(trainer={"reproducibleCPU": True}),
     sweep_manifest(trainer={"reproducibleCPU": True}), None),
    ("the paper's BigGAN", sweep_manifest(trainer={"model": "biggan", "width": 96, "zDim": 120,
                                                   "emaStart": 20000}),
     None, None),
    ("an EMA start for dcgan", sweep_manifest(trainer={"emaStart": 20000}), None,
     "emaStart: only biggan"),
    ("keep the width", sweep_manifest(trainer={"width": 96}),
     sweep_manifest(trainer={"width": 96}), None),
    ("change the width", sweep_manifest(trainer={"width": 96}),
     sweep_manifest(trainer={"width": 32}), "width is immutable"),
    ("set a width", sweep_manifest(trainer={"width": 96}), BASE, "width is immutable"),
    ("drop zDim", BASE, sweep_manifest(trainer={"zDim": 120}), "zDim is immutable"),
    ("change emaStart", sweep_manifest(trainer={"model": "biggan", "emaStart": 20000}),
     sweep_manifest(trainer={"model": "biggan", "emaStart": 1000}), "emaStart is immutable"),
    ("four trials per GPU on two GPUs", sweep_manifest(trialsPerGPU=4, trainer={"gpus": 2}), None,
     "trialsPerGPU: must be 1"),
    ("change trialsPerGPU", sweep_manifest(trialsPerGPU=2), sweep_manifest(trialsPerGPU=4),
     "trialsPerGPU is immutable"),
    ("an adaptive sweep with a cap", sweep_manifest(strategy={"type": "adaptive", "maxTrials": 8}),
     None, None),
    ("a cap on a grid", sweep_manifest(strategy={"maxTrials": 8}), None,
     "maxTrials: only with type adaptive"),
    ("confidence 0.4", sweep_manifest(strategy={"confidence": 0.4}), None,
     "confidence: must be > 0.5"),
    ("confidence 0.9", sweep_manifest(strategy={"type": "adaptive", "confidence": 0.9}), None,
     None),
    # Data-parallel trials (tests/core/test_spec_distributed.py has the rest)
    ("two nodes of four GPUs", sweep_manifest(batchSizes=[8, 16], trainer={"gpus": 4,
                                                                          "nodes": 2}),
     None, None),
    ("two nodes with trials sharing a GPU", sweep_manifest(trialsPerGPU=2, trainer={"nodes": 2}),
     None, "trialsPerGPU: must be 1 when spec.trainer.nodes"),
    ("CPU processes with trials sharing a GPU",
     sweep_manifest(trialsPerGPU=2, trainer={"gpus": 0, "processes": 2}), None,
     "trialsPerGPU: must be 1 when spec.trainer.processes"),
    ("a batch size not divisible by the GPUs",
     sweep_manifest(batchSizes=[8, 12], trainer={"gpus": 8}), None,
     "spec.batchSizes: a batch size is not divisible"),
    ("a range not divisible by the GPUs",
     {**BASE, "spec": {**{k: v for k, v in BASE["spec"].items() if k != "batchSizes"},
                       "batchSizeRange": {"min": 4, "max": 64},
                       "trainer": {**BASE["spec"]["trainer"], "gpus": 8}}},
     None, "spec.batchSizeRange.min: is not divisible"),
    ("a custom trainer on four GPUs", custom(trainer={"gpus": 4}), None, None),
    ("nodes with a command", custom(trainer={"nodes": 2}), None,
     "spec.trainer.nodes: data-parallel trials are for the built-in trainer"),
    ("processes with a command", custom(trainer={"gpus": 0, "processes": 1}), None,
     "spec.trainer.processes: data-parallel trials are for the built-in trainer"),
    ("processes other than the GPUs", sweep_manifest(trainer={"gpus": 2, "processes": 4}),
     None, "spec.trainer.processes: must equal spec.trainer.gpus"),
    ("a CUDA graph on two GPUs", sweep_manifest(trainer={"gpus": 2, "cudaGraph": True}), None,
     "spec.trainer.cudaGraph: only for trials of one worker process"),
    # Transition rules (oldSelf)
    ("grid to adaptive", sweep_manifest(strategy={"type": "adaptive"}),
     sweep_manifest(strategy={"type": "grid"}), "strategy.type is immutable"),
    ("raise maxTrials", sweep_manifest(strategy={"type": "adaptive", "maxTrials": 12}),
     sweep_manifest(strategy={"type": "adaptive", "maxTrials": 8}), None),
    ("append a batch size", sweep_manifest(batchSizes=[2, 4, 8, 16, 32, 64, 128]), BASE, None),
    ("remove a batch size", sweep_manifest(batchSizes=[2, 4, 8]), BASE, "appended, not removed"),
    ("add seeds", sweep_manifest(seeds=3), BASE, None),
    ("remove seeds", sweep_manifest(seeds=1), BASE, "seeds can be added"),
    ("seeds defaulted on both sides", {**BASE, "spec": {k: v for k, v in BASE["spec"].items()
                                                        if k != "seeds"}},
     {**BASE, "spec": {k: v for k, v in BASE["spec"].items() if k != "seeds"}}, None),
    ("change the model", sweep_manifest(trainer={"model": "wgan-gp"}), BASE, "model is immutable"),
    ("set a model where the default was", sweep_manifest(trainer={"model": "biggan"}),
     _without(BASE, "trainer", "model"), "model is immutable"),
    ("spell out the default model", BASE, _without(BASE, "trainer", "model"), None),
    ("change the command", custom(trainer={"command": ["python", "other.py"]}), CUSTOM,
     "command is immutable"),
    ("give a built-in sweep a command", custom(), custom(trainer={"command": None}),
     "command is immutable"),
    ("keep the command", CUSTOM, CUSTOM, None),
    ("spell out a false bf16", sweep_manifest(trainer={"bf16": False}), BASE, None),
    ("change the optimizer", sweep_manifest(optimizer={"name": "rmsprop"}), BASE,
     "optimizer is immutable"),
    ("set an optimizer where the default was", sweep_manifest(optimizer={"name": "rmsprop"}),
     _without(BASE, "optimizer"), "optimizer is immutable"),
    ("drop an optimizer that was the default", _without(BASE, "optimizer"), BASE, None),
    ("drop an optimizer's rates", _without(BASE, "optimizer"),
     sweep_manifest(optimizer={"name": "adam", "generator": {"learningRate": 1e-4}}),
     "optimizer is immutable"),
    ("change a learning rate", sweep_manifest(optimizer={"name": "adam", "generator": {
        "learningRate": 2e-4}}), BASE, "optimizer is immutable"),
    ("change the dataset", sweep_manifest(trainer={"dataset": {"name": "faces"}}), BASE,
     "dataset is immutable"),
    ("drop the default dataset's name", sweep_manifest(trainer={"dataset": {}}), BASE, None),
    ("change a custom dataset's claim", custom(trainer={"dataset": {"pvc": "other"}}), CUSTOM,
     "dataset is immutable"),
    ("change the target", sweep_manifest(target={"fidThreshold": 40, "maxSteps": 4000,
                                                 "evalEvery": 10}), BASE, "target is immutable"),
    ("rename fidThreshold", sweep_manifest(target={"threshold": 50, "maxSteps": 4000,
                                                   "evalEvery": 10}), BASE, None),
    ("change the goal", custom(target={"metric": "val_accuracy", "goal": "minimize",
                                       "threshold": 0.9, "maxSteps": 2000}), CUSTOM,
     "target is immutable"),
    ("drop evalEvery", sweep_manifest(target={"fidThreshold": 50, "maxSteps": 4000}), BASE,
     "target is immutable"),
    ("change parallelism", sweep_manifest(parallelism=8), BASE, None),
    ("move checkpoints to another claim", sweep_manifest(trainer={"checkpoints": {"pvc": "fast"}}),
     sweep_manifest(trainer={"checkpoints": {"pvc": "slow"}}), None),
    ("start persisting checkpoints",
     sweep_manifest(trainer={"checkpoints": {"pvc": "ckpt"}, "checkpointEvery": 50}), BASE, None),
    ("widen the range", {**BASE, "spec": {**{k: v for k, v in BASE["spec"].items()
                                             if k != "batchSizes"},
                                          "batchSizeRange": {"min": 2, "max": 128}}},
     {**BASE, "spec": {**{k: v for k, v in BASE["spec"].items() if k != "batchSizes"},
                       "batchSizeRange": {"min": 4, "max": 64}}}, None),
    ("narrow the range", {**BASE, "spec": {**{k: v for k, v in BASE["spec"].items()
                                              if k != "batchSizes"},
                                           "batchSizeRange": {"min": 8, "max": 64}}},
     {**BASE, "spec": {**{k: v for k, v in BASE["spec"].items() if k != "batchSizes"},
                       "batchSizeRange": {"min": 4, "max": 64}}}, "can be widened"),
]


@pytest.mark.parametrize(("why", "new", "old", "fragment"), CEL_CASES,
                         ids=[c[0] for c in CEL_CASES])
def test_cel_rules(why, new, old, fragment):
    errors = cel_errors(new, old)
    if fragment is None:
        assert errors == [], why
    else:
        assert any(fragment in e for e in errors), (why, errors)


def test_every_rule_is_exercised_both_ways_by_the_cases():
    """Each rule fails in some case and passes in another (no rule is left untested)."""
    failing, passing = set(), set()
    for _, new, old, _ in CEL_CASES:
        msgs = set(cel_errors(new, old))
        for _, _, rule in rules():
            if is_transition_rule(rule["rule"]) and old is None:
                continue
            (failing if rule["message"] in msgs else passing).add(rule["rule"])
    all_rules = {r["rule"] for _, _, r in rules()}
    assert all_rules - failing == set(), "rules never seen failing"
    assert all_rules - passing == set(), "rules never seen passing"


def test_defaulting_fills_what_the_trainer_and_planner_rely_on():
    body = apply_defaults(openapi_schema(), {"spec": {"trainer": {"image": "x"},
                                                      "batchSizes": [2],
                                                      "target": {"threshold": 1,
                                                                 "maxSteps": 5}}})
    spec = body["spec"]
    assert spec["seeds"] == 1 and spec["parallelism"] == 4 and spec["trialsPerGPU"] == 1
    assert spec["target"]["metric"] == "fid" and spec["target"]["goal"] == "minimize"
    assert spec["pruning"]["sfoBound"] is True and spec["metrics"]["source"] == "auto"
    # The built-in trainer's own fields are parse_sweep's to default, not the CRD's: a custom
    # sweep must be stored without them.
    assert "model" not in spec["trainer"] and "name" not in spec["trainer"]["dataset"]
    assert "optimizer" not in spec
    parsed = parse_sweep(sweep_manifest("d", base=MINIMAL, **spec))
    assert (parsed.seeds, parsed.parallelism, parsed.trainer.model) == (1, 4, "dcgan")
    assert (parsed.trainer.dataset.name, parsed.optimizer.name) == ("digits", "adam")


# ---------------------------------------------------------------------------------------------
# The examples of the project
# ---------------------------------------------------------------------------------------------


def _example_sweeps() -> list[tuple[str, dict]]:
    out = []
    for path in sorted((ROOT / "examples").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CriticalBatchSweep":
                out.append((str(path.relative_to(ROOT)), doc))
    return out


EXAMPLES = _example_sweeps()


@pytest.mark.skipif(not EXAMPLES, reason="no example sweeps in examples/")
@pytest.mark.parametrize(("path", "manifest"), EXAMPLES, ids=[p for p, _ in EXAMPLES])
def test_every_example_sweep_validates_against_the_crd_and_parses(path, manifest):
    assert schema_errors(manifest) == [], path
    assert cel_errors(manifest) == [], path
    sweep_ = parse_sweep(manifest)
    assert sweep_.trials(), path


def test_the_crd_file_holds_one_document():
    docs = [d for d in yaml.safe_load_all(Path(ROOT / "crds").joinpath(
        "critbatch.dev_criticalbatchsweeps.yaml").read_text()) if d]
    assert len(docs) == 1


def test_the_crd_is_a_valid_apiextensions_v1_object():
    kv = pytest.importorskip("kubernetes_validate")
    kv.validate(load_crd(), "1.30", strict=True)
