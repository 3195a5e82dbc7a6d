"""The example sweeps: the paper's three settings and the small local ones, as documented.

That every example validates against the CRD (schema and CEL rules) and parses is tested with
the CRD's own tests (tests/test_crd.py); this file checks what the examples are meant to hold.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))


def sweeps() -> list[tuple[str, dict]]:
    found = []
    for path in EXAMPLES:
        for i, doc in enumerate(d for d in yaml.safe_load_all(path.read_text()) if d):
            found.append((f"{path.relative_to(ROOT)}#{i}", doc))
    return found


SWEEPS = sweeps()


def test_examples_exist() -> None:
    names = {p.relative_to(ROOT / "examples").as_posix() for p in EXAMPLES}
    assert {"digits-local.yaml", "digits.yaml", "faces.yaml"} <= names
    assert {f"paper/{n}.yaml" for n in ("dcgan-lsun-bedroom", "wgan-gp-celeba",
                                        "biggan-imagenet")} <= names


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


def test_example_files_are_named_for_what_they_hold() -> None:
    for path in EXAMPLES:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert docs, path
        if len(docs) == 1 and path.parent.name == "examples":
            assert docs[0]["metadata"]["name"] == Path(path).stem
