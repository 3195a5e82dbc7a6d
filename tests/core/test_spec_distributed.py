"""Data-parallel trials in the spec: `spec.trainer.nodes` and `spec.trainer.processes`, the
world size they make, and the combinations that `parse_sweep` and the CRD both refuse, each
naming the field."""

from __future__ import annotations

import pytest
from crd_tools import (
    apply_defaults,
    cel_errors,
    compile_rule,
    openapi_schema,
    rules,
    schema_errors,
    to_cel,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sweeps import BASE, MINIMAL, sweep_manifest

from critbatch.spec import SpecError, parse_sweep

DIVISIBLE = "is not divisible by"
COMMAND = {"command": ["python", "train.py"]}


def custom(**trainer) -> dict:
    """A custom trainer's sweep (the user's program maximizing its accuracy) with `trainer`."""
    return sweep_manifest(base=MINIMAL, trainer={**COMMAND, **trainer},
                          target={"metric": "accuracy", "goal": "maximize", "threshold": 0.9,
                                  "maxSteps": 100})


def crd_errors(manifest: dict) -> list[str]:
    return schema_errors(manifest) + cel_errors(manifest)


def crd_rejects(manifest: dict, field: str) -> list[str]:
    """The CRD's errors; one of them names `field`."""
    errors = crd_errors(manifest)
    assert any(e.startswith(f"{field}:") for e in errors), errors
    return errors


def parse_rejects(manifest: dict, field: str) -> str:
    """parse_sweep's error, which starts with `field`."""
    with pytest.raises(SpecError) as exc:
        parse_sweep(manifest)
    assert str(exc.value).startswith(f"{field}:"), str(exc.value)
    return str(exc.value)


# ---------------------------------------------------------------------------------------------
# Valid: the world size a spec makes
# ---------------------------------------------------------------------------------------------


VALID = [
    # (id, manifest, nodes, processes per node)
    ("one process by default", sweep_manifest(base=MINIMAL), 1, 1),
    ("no GPU is one process", sweep_manifest(), 1, 1),
    ("one process per GPU", sweep_manifest(batchSizes=[4, 8, 16], trainer={"gpus": 4}), 1, 4),
    ("processes spelled out as the GPUs", sweep_manifest(
        batchSizes=[4, 8], trainer={"gpus": 2, "processes": 2}), 1, 2),
    ("two nodes of eight GPUs", sweep_manifest(batchSizes=[16, 32, 64],
                                               trainer={"gpus": 8, "nodes": 2}), 2, 8),
    ("three nodes of two GPUs", sweep_manifest(batchSizes=[6, 12, 24],
                                               trainer={"gpus": 2, "nodes": 3}), 3, 2),
    ("CPU processes", sweep_manifest(batchSizes=[4, 8], trainer={"gpus": 0, "processes": 4}),
     1, 4),
    ("CPU processes on two nodes", sweep_manifest(
        batchSizes=[12, 24], trainer={"gpus": 0, "processes": 3, "nodes": 2}), 2, 3),
    ("a range of multiples", sweep_manifest(
        batchSizes=None, batchSizeRange={"min": 8, "max": 64}, trainer={"gpus": 4, "nodes": 2}),
     2, 4),
    ("one node spelled out", sweep_manifest(batchSizes=[3, 5], trainer={"nodes": 1}), 1, 1),
    ("trials share a GPU as one process each", sweep_manifest(
        trialsPerGPU=4, trainer={"gpus": 1, "nodes": 1, "processes": 1}), 1, 1),
    ("a CUDA graph on one process", sweep_manifest(
        trainer={"gpus": 1, "processes": 1, "cudaGraph": True}), 1, 1),
    ("a custom trainer launches itself on its GPUs", custom(gpus=4), 1, 1),
    ("a custom trainer may spell out one node", custom(nodes=1), 1, 1),
]


def _clean(manifest: dict) -> dict:
    """The manifest without the spec fields a case set to None (to drop the base's)."""
    manifest["spec"] = {k: v for k, v in manifest["spec"].items() if v is not None}
    return manifest


@pytest.mark.parametrize(("why", "manifest", "nodes", "per_node"), VALID,
                         ids=[c[0] for c in VALID])
def test_valid_shapes_are_accepted_with_their_world_size(why, manifest, nodes, per_node):
    manifest = _clean(manifest)
    trainer = parse_sweep(manifest).trainer
    assert (trainer.nodes, trainer.processes_per_node) == (nodes, per_node), why
    assert trainer.world_size == nodes * per_node
    assert crd_errors(manifest) == [], why


def test_unset_fields_parse_to_the_models_defaults():
    trainer = parse_sweep(sweep_manifest(base=MINIMAL)).trainer
    assert (trainer.nodes, trainer.processes) == (1, None)


def test_the_crd_defaults_neither_field():
    """Both are the built-in trainer's: a default would put them into every custom sweep."""
    trainer = apply_defaults(openapi_schema(), custom())["spec"]["trainer"]
    assert "nodes" not in trainer and "processes" not in trainer
    props = openapi_schema()["properties"]["spec"]["properties"]["trainer"]["properties"]
    for key in ("nodes", "processes"):
        assert (props[key]["type"], props[key]["minimum"], props[key]["maximum"]) == (
            "integer", 1, 64)
        assert "default" not in props[key]


# ---------------------------------------------------------------------------------------------
# Invalid: refused by parse_sweep and by the CRD, naming the field
# ---------------------------------------------------------------------------------------------


INVALID = [
    # (id, manifest, parse_sweep's field, the CRD's field, a fragment of parse_sweep's message)
    ("a batch size not divisible by the GPUs",
     sweep_manifest(batchSizes=[8, 12, 16], trainer={"gpus": 8}),
     "spec.batchSizes[1]", "spec.batchSizes",
     "12 is not divisible by 8 worker processes (spec.trainer.nodes x processes per node)"),
    ("a batch size not divisible by nodes x GPUs",
     sweep_manifest(batchSizes=[16, 24], trainer={"gpus": 4, "nodes": 4}),
     "spec.batchSizes[1]", "spec.batchSizes", "24 is not divisible by 16 worker processes"),
    ("a batch size not divisible by the CPU processes",
     sweep_manifest(batchSizes=[6, 9], trainer={"gpus": 0, "processes": 3, "nodes": 2}),
     "spec.batchSizes[1]", "spec.batchSizes", "9 is not divisible by 6"),
    ("a range whose minimum is not divisible",
     sweep_manifest(batchSizes=None, batchSizeRange={"min": 4, "max": 64},
                    trainer={"gpus": 8}),
     "spec.batchSizeRange.min", "spec.batchSizeRange.min", "4 is not divisible by 8"),
    ("two nodes with trials sharing a GPU", sweep_manifest(trialsPerGPU=2, trainer={"nodes": 2}),
     "spec.trialsPerGPU", "spec.trialsPerGPU", "spec.trainer.nodes is 2"),
    ("CPU processes with trials sharing a GPU",
     sweep_manifest(trialsPerGPU=2, trainer={"gpus": 0, "processes": 2}),
     "spec.trialsPerGPU", "spec.trialsPerGPU", "spec.trainer.processes is 2"),
    ("processes other than the GPUs", sweep_manifest(trainer={"gpus": 2, "processes": 4}),
     "spec.trainer.processes", "spec.trainer.processes", "must equal spec.trainer.gpus (2)"),
    ("two processes on the default GPU", sweep_manifest(base=MINIMAL, trainer={"processes": 2}),
     "spec.trainer.processes", "spec.trainer.processes", "must equal spec.trainer.gpus (1)"),
    ("nodes with a custom trainer", custom(nodes=2), "spec.trainer.nodes", "spec.trainer.nodes",
     "data-parallel trials are for the built-in trainer"),
    ("processes with a custom trainer", custom(gpus=0, processes=1), "spec.trainer.processes",
     "spec.trainer.processes", "data-parallel trials are for the built-in trainer"),
    ("a CUDA graph on two GPUs", sweep_manifest(trainer={"gpus": 2, "cudaGraph": True}),
     "spec.trainer.cudaGraph", "spec.trainer.cudaGraph", "only for trials of one worker process"),
    ("a CUDA graph on two nodes", sweep_manifest(trainer={"gpus": 1, "nodes": 2,
                                                          "cudaGraph": True}),
     "spec.trainer.cudaGraph", "spec.trainer.cudaGraph", "not 2"),
    ("a CUDA graph on CPU processes",
     sweep_manifest(trainer={"gpus": 0, "processes": 2, "cudaGraph": True}),
     "spec.trainer.cudaGraph", "spec.trainer.cudaGraph", "not 2"),
    ("micro-batches on two nodes",
     sweep_manifest(trainer={"model": "biggan", "nodes": 2, "microBatch": 8}),
     "spec.trainer.microBatch", "spec.trainer.microBatch", "not 2"),
    ("recomputation on two GPUs",
     sweep_manifest(trainer={"model": "biggan", "gpus": 2, "recomputeActivations": True}),
     "spec.trainer.recomputeActivations", "spec.trainer.recomputeActivations", "not 2"),
]


@pytest.mark.parametrize(("why", "manifest", "field", "crd_field", "fragment"), INVALID,
                         ids=[c[0] for c in INVALID])
def test_invalid_combinations_are_refused_by_both_naming_the_field(
        why, manifest, field, crd_field, fragment):
    manifest = _clean(manifest)
    assert fragment in parse_rejects(manifest, field), why
    crd_rejects(manifest, crd_field)


OUT_OF_RANGE = [
    ("nodes", 0), ("nodes", 65), ("nodes", "2"), ("nodes", 1.5), ("nodes", True),
    ("processes", 0), ("processes", 65), ("processes", "4"), ("processes", 2.5),
]


@pytest.mark.parametrize(("key", "value"), OUT_OF_RANGE,
                         ids=[f"{k}={v!r}" for k, v in OUT_OF_RANGE])
def test_out_of_range_or_mistyped_values_are_refused_by_both(key, value):
    manifest = sweep_manifest(trainer={"gpus": 0, key: value})
    field = f"spec.trainer.{key}"
    message = parse_rejects(manifest, field)
    assert "must be" in message
    assert any(e.startswith(f"{field}:") for e in schema_errors(manifest)), schema_errors(
        manifest)


def test_an_integral_float_is_an_integer_as_yaml_may_spell_it():
    trainer = parse_sweep(sweep_manifest(batchSizes=[4, 8], trainer={"gpus": 0,
                                                                    "processes": 4.0})).trainer
    assert trainer.processes == 4 and isinstance(trainer.processes, int)


def test_the_first_batch_size_that_does_not_divide_is_named():
    message = parse_rejects(sweep_manifest(batchSizes=[8, 16, 20, 30], trainer={"gpus": 8}),
                            "spec.batchSizes[2]")
    assert message.startswith("spec.batchSizes[2]: 20 is not divisible by 8 worker processes")


def test_a_custom_trainers_batch_sizes_need_not_divide_by_its_gpus():
    """A custom trainer is one process to critbatch, whatever GPUs it spreads itself over."""
    manifest = custom(gpus=4)
    manifest["spec"]["batchSizes"] = [3, 5, 7]
    assert parse_sweep(manifest).trainer.world_size == 1
    assert crd_errors(manifest) == []


# ---------------------------------------------------------------------------------------------
# Properties: any world size, batch sizes that are or are not its multiples
# ---------------------------------------------------------------------------------------------


def _shape(nodes: int, per_node: int, on_gpus: bool) -> dict:
    """The trainer fields of `nodes` pods of `per_node` workers, on GPUs or on the CPU."""
    if on_gpus:
        return {"nodes": nodes, "gpus": per_node}
    return {"nodes": nodes, "gpus": 0, "processes": per_node}


SCHEMA = openapi_schema()
# The CRD's rule on spec.batchSizes alone: the properties evaluate it where the cases above
# evaluate every rule.
((_, SPEC_NODE, DIVISIBILITY),) = [
    (path, node, rule) for path, node, rule in rules(SCHEMA)
    if rule["message"].startswith("spec.batchSizes:") and DIVISIBLE in rule["message"]]


def divisibility_rule_holds(manifest: dict) -> bool:
    spec = apply_defaults(SCHEMA, manifest)["spec"]
    return bool(compile_rule(DIVISIBILITY["rule"]).evaluate({"self": to_cel(SPEC_NODE, spec)}))


shapes = st.tuples(st.integers(1, 8), st.integers(1, 16), st.booleans())
# Batch sizes stay within the digits dataset's 1797 examples: 14 x the largest world size.
MAX_FACTOR = 14
_settings = settings(max_examples=60, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(shapes, st.lists(st.integers(1, MAX_FACTOR), min_size=1, max_size=8, unique=True))
def test_multiples_of_the_world_size_pass_both(shape, factors):
    nodes, per_node, on_gpus = shape
    world = nodes * per_node
    manifest = sweep_manifest(batchSizes=[world * f for f in factors],
                              trainer=_shape(nodes, per_node, on_gpus))
    trainer = parse_sweep(manifest).trainer
    assert trainer.world_size == world
    assert divisibility_rule_holds(manifest)


@_settings
@given(shapes.filter(lambda s: s[0] * s[1] > 1), st.data())
def test_a_non_multiple_fails_both_naming_its_index(shape, data):
    nodes, per_node, on_gpus = shape
    world = nodes * per_node
    multiples = data.draw(st.lists(st.integers(1, MAX_FACTOR).map(lambda f: f * world),
                                   max_size=6, unique=True), label="multiples")
    bad = data.draw(st.integers(1, MAX_FACTOR * world).filter(lambda b: b % world != 0),
                    label="bad")
    index = data.draw(st.integers(0, len(multiples)), label="index")
    batch_sizes = [*multiples[:index], bad, *multiples[index:]]
    manifest = sweep_manifest(batchSizes=batch_sizes, trainer=_shape(nodes, per_node, on_gpus))
    message = parse_rejects(manifest, f"spec.batchSizes[{index}]")
    assert f"{bad} {DIVISIBLE} {world} worker processes" in message
    assert not divisibility_rule_holds(manifest)


def test_the_base_sweep_is_one_process():
    assert parse_sweep(BASE).trainer.world_size == 1
