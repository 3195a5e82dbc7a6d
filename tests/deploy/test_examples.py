"""Every example sweep is a valid CriticalBatchSweep for the CRD as the API server would see it.

jsonschema checks the openAPIV3Schema strictly (an unknown field is an error, as with
`kubectl apply`'s strict field validation); cel-python evaluates the CRD's CEL rules on the
defaulted object, except transition rules (those need an old object).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import pytest
import yaml

from .conftest import ROOT

CRD = ROOT / "crds" / "critbatch.dev_criticalbatchsweeps.yaml"
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))


def load_crd() -> dict:
    (crd,) = [d for d in yaml.safe_load_all(CRD.read_text()) if d]
    return crd


def served_schema(crd: dict, version: str) -> dict:
    (v,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return v["schema"]["openAPIV3Schema"]


def strict(schema: Any) -> Any:
    """The schema with unknown fields forbidden wherever Kubernetes would drop them."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def defaulted(value: Any, schema: dict) -> Any:
    """The object after the API server's defaulting, with `number` fields as floats (as CEL
    sees them)."""
    if isinstance(value, dict):
        value = dict(value)
        props = schema.get("properties", {})
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        return {k: defaulted(v, props.get(k, {})) for k, v in value.items()}
    if isinstance(value, list):
        return [defaulted(v, schema.get("items", {})) for v in value]
    if schema.get("type") == "number" and isinstance(value, int):
        return float(value)
    return value


def cel_failures(value: Any, schema: dict, path: str = "self") -> list[str]:
    """Messages of the CEL rules that the (defaulted) value breaks."""
    failed = []
    env = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue  # a transition rule: only an update has an old object
        program = env.program(env.compile(rule["rule"]))
        if not program.evaluate({"self": celpy.json_to_cel(value)}):
            failed.append(f"{path}: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                failed += cel_failures(value[key], sub, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            failed += cel_failures(item, schema.get("items", {}), f"{path}[{i}]")
    return failed


def sweeps() -> list[tuple[str, dict]]:
    found = []
    for path in EXAMPLES:
        for i, doc in enumerate(d for d in yaml.safe_load_all(path.read_text()) if d):
            found.append((f"{path.relative_to(ROOT)}#{i}", doc))
    return found


SWEEPS = sweeps()


@pytest.fixture(scope="module")
def crd() -> dict:
    return load_crd()


def test_examples_exist() -> None:
    names = {p.relative_to(ROOT / "examples").as_posix() for p in EXAMPLES}
    assert {"digits-local.yaml", "digits.yaml", "faces.yaml"} <= names
    assert {f"paper/{n}.yaml" for n in ("dcgan-lsun-bedroom", "wgan-gp-celeba",
                                        "biggan-imagenet")} <= names


@pytest.mark.parametrize(("where", "sweep"), SWEEPS, ids=[w for w, _ in SWEEPS])
def test_example_validates_against_the_crd(crd: dict, where: str, sweep: dict) -> None:
    group, _, version = sweep["apiVersion"].partition("/")
    assert group == crd["spec"]["group"]
    assert sweep["kind"] == crd["spec"]["names"]["kind"]
    schema = served_schema(crd, version)
    # OpenAPI v3.0 schemas use draft 4's boolean exclusiveMinimum/exclusiveMaximum.
    jsonschema.Draft4Validator(strict(schema)).validate(sweep)
    assert cel_failures(defaulted(sweep, schema), schema) == []


def test_strict_validation_catches_a_misspelt_field(crd: dict) -> None:
    """The checks above can fail: a typo and a broken CEL rule are both caught."""
    _, sweep = SWEEPS[0]
    schema = served_schema(crd, "v1alpha1")
    typo = copy.deepcopy(sweep)
    typo["spec"]["target"]["fidTreshold"] = 1.0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(strict(schema)).validate(typo)
    both = copy.deepcopy(sweep)
    both["spec"]["batchSizes"] = [8, 16]
    both["spec"]["batchSizeRange"] = {"min": 8, "max": 16}
    assert cel_failures(defaulted(both, schema), schema)


def paper_sweeps() -> dict[str, dict]:
    return {
        doc["metadata"]["name"]: doc["spec"]
        for where, doc in SWEEPS
        if where.startswith("examples/paper/")
    }


# SCIENCE.md: (alpha_G, alpha_D) per setting and optimizer, and the thresholds.
PAPER = {
    "dcgan-lsun-bedroom": (70, {"adam": (1e-4, 3e-4), "adabelief": (3e-4, 3e-5),
                                "rmsprop": (1e-4, 3e-5)}),
    "wgan-gp-celeba": (50, {"adam": (1e-4, 3e-4), "adabelief": (5e-4, 3e-5),
                            "rmsprop": (3e-4, 1e-4)}),
    "biggan-imagenet": (None, {"adam": (1e-4, 4e-4)}),
}


@pytest.mark.parametrize("setting", sorted(PAPER))
def test_paper_settings_use_the_papers_learning_rates(setting: str) -> None:
    threshold, rates = PAPER[setting]
    found = {n: s for n, s in paper_sweeps().items() if n.startswith(setting + "-")}
    assert set(found) == {f"{setting}-{opt}" for opt in rates}
    for name, spec in found.items():
        opt = spec["optimizer"]
        assert name == f"{setting}-{opt['name']}"
        got = (opt["generator"]["learningRate"], opt["discriminator"]["learningRate"])
        assert got == pytest.approx(rates[opt["name"]])
        if threshold is not None:
            assert spec["target"]["fidThreshold"] == threshold
        # Real data from a claim, Inception weights from a file on a claim.
        assert spec["trainer"]["dataset"]["pvc"]
        assert spec["trainer"]["inception"]["file"]


def test_local_example_needs_no_gpu_and_no_cluster() -> None:
    (spec,) = [d["spec"] for w, d in SWEEPS if w.startswith("examples/digits-local.yaml")]
    assert spec["trainer"]["dataset"]["name"] == "digits"
    assert spec["trainer"]["device"] == "cpu"
    assert spec["trainer"]["gpus"] == 0
    assert "pvc" not in spec["trainer"]["dataset"] and "inception" not in spec["trainer"]


def test_examples_parse_with_the_projects_parser() -> None:
    """The local runner's parser accepts every example too (the same rules, applied in Python)."""
    spec_module = pytest.importorskip("critbatch.spec")
    for where, doc in SWEEPS:
        try:
            spec_module.parse_sweep(doc)
        except spec_module.SpecError as exc:  # pragma: no cover - the failure message
            pytest.fail(f"{where}: {exc}")


def test_example_files_are_named_for_what_they_hold() -> None:
    for path in EXAMPLES:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert docs, path
        if len(docs) == 1 and path.parent.name == "examples":
            assert docs[0]["metadata"]["name"] == Path(path).stem
