"""The digits campaign (examples/campaign/digits/): what `kubectl apply -k` sends to the API
server, and the Argo CD Application and Flux Kustomization that sync it from Git.

kubectl renders the directory as Argo CD and Flux do (kustomize); every rendered sweep is then
checked against the CRD (its schema and CEL rules) and parsed as the operator parses it.
"""

from __future__ import annotations

import re

import pytest
import yaml
from crd_tools import cel_errors, schema_errors

from critbatch.science import estimate_targets
from critbatch.spec import Sweep, parse_sweep

from .conftest import ROOT, documents, find_tool, run

CAMPAIGN = ROOT / "examples" / "campaign" / "digits"
GITOPS = ROOT / "docs" / "gitops"
LABEL = "critbatch.dev/campaign"
NAME = "digits"
REFERENCE = "digits-adam"
# A Kubernetes label value: at most 63 characters, alphanumeric at both ends.
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return documents(run([find_tool("kubectl"), "kustomize", str(CAMPAIGN)]))


@pytest.fixture(scope="module")
def parsed(rendered: list[dict]) -> dict[str, Sweep]:
    return {doc["metadata"]["name"]: parse_sweep(doc) for doc in rendered}


def test_kustomize_renders_every_sweep_of_the_directory_with_the_campaign_label(
        rendered: list[dict]) -> None:
    kustomization = yaml.safe_load((CAMPAIGN / "kustomization.yaml").read_text())
    on_disk = {p.name for p in CAMPAIGN.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk
    assert {d["kind"] for d in rendered} == {"CriticalBatchSweep"}
    assert sorted(d["metadata"]["name"] for d in rendered) == [
        "digits-adabelief", "digits-adam", "digits-rmsprop"]
    for doc in rendered:
        assert doc["metadata"]["labels"] == {LABEL: NAME}, doc["metadata"]["name"]
    assert LABEL_VALUE.match(NAME)


def test_each_rendered_sweep_validates_against_the_crd_and_parses(rendered: list[dict]) -> None:
    for doc in rendered:
        name = doc["metadata"]["name"]
        assert schema_errors(doc) == [], name
        assert cel_errors(doc) == [], name
        assert parse_sweep(doc).trials(), name


def test_the_other_sweeps_predict_from_the_reference_on_its_grid_seeds_and_target(
        parsed: dict[str, Sweep]) -> None:
    """Proposition 3.4 carries the noise ratio across optimizers of one network and target: the
    sweeps differ in their optimizer alone."""
    reference = parsed[REFERENCE]
    assert reference.reference is None
    assert reference.optimizer.name == "adam"
    others = {n: s for n, s in parsed.items() if n != REFERENCE}
    assert {s.optimizer.name for s in others.values()} == {"rmsprop", "adabelief"}
    for name, sweep in others.items():
        assert sweep.reference is not None and sweep.reference.sweep == REFERENCE, name
        assert sweep.trainer == reference.trainer, name
        assert sweep.batch_sizes == reference.batch_sizes, name
        assert (sweep.seeds, sweep.target) == (reference.seeds, reference.target), name


def test_every_prediction_from_an_inner_reference_b_star_lands_inside_the_grid(
        parsed: dict[str, Sweep]) -> None:
    """A prediction on or beyond the grid's edge could not be told from an edge argmin: whatever
    b* the reference measures inside its grid, Proposition 3.4 must predict inside the grid."""
    reference = parsed[REFERENCE]
    grid = sorted(reference.batch_sizes)
    targets = [(s.optimizer.setting(), None, None) for n, s in sorted(parsed.items())
               if n != REFERENCE]
    for b_star in grid[1:-1]:
        # Θ and |S| are one network's and one dataset's: any values, they cancel.
        _, estimates = estimate_targets(reference.optimizer.setting(), b_star, 24_928, 1797,
                                        targets)
        for est in estimates:
            assert grid[0] < est.batch_size < grid[-1], (b_star, est)


def test_the_reference_is_the_digits_demo_and_runs_without_a_gpu_or_data(
        parsed: dict[str, Sweep]) -> None:
    demo = parse_sweep(yaml.safe_load((ROOT / "examples" / "digits-local.yaml").read_text()))
    reference = parsed[REFERENCE]
    assert reference.optimizer == demo.optimizer
    assert (reference.seeds, reference.target) == (demo.seeds, demo.target)
    # The demo's grid, and a batch size below it for an optimizer whose b* is lower than Adam's.
    assert set(demo.batch_sizes) < set(reference.batch_sizes)
    assert min(reference.batch_sizes) < min(demo.batch_sizes)
    cluster = parse_sweep(yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text()))
    for name, sweep in parsed.items():
        t = sweep.trainer
        assert (t.image, t.device, t.gpus) == (cluster.trainer.image, "cpu", 0), name
        assert t.dataset.name == "digits" and t.dataset.pvc is None, name
        assert t.inception is None and t.command == (), name


def test_the_campaign_runs_its_reference_first(rendered: list[dict]) -> None:
    campaign = pytest.importorskip("critbatch.campaign")
    assert campaign.campaign_name(rendered) == NAME
    order = [m["metadata"]["name"] for m in campaign.campaign_order(rendered)]
    assert order[0] == REFERENCE and len(order) == 3


def test_the_readme_says_how_to_run_the_campaign_everywhere() -> None:
    text = (CAMPAIGN / "README.md").read_text()
    for command in ("kubectl apply -k examples/campaign/digits/",
                    f"kubectl wait -n gan-research --for=condition=Ready cbs -l {LABEL}={NAME}",
                    f"--selector {LABEL}={NAME}",
                    "critbatch run examples/campaign/digits/"):
        assert command in text, command
    for link in re.findall(r"\]\(([^)#:]+)", text):
        assert (CAMPAIGN / link).exists(), link


def one_document(path_name: str, kind: str) -> dict:
    (doc,) = [d for d in documents((GITOPS / path_name).read_text()) if d["kind"] == kind]
    return doc


def test_argocd_application_renders_the_campaign_with_kustomize() -> None:
    app = one_document("argocd-campaign.yaml", "Application")
    assert app["apiVersion"] == "argoproj.io/v1alpha1"
    source = app["spec"]["source"]
    # Argo CD picks kustomize for a directory that holds a kustomization.yaml.
    assert (ROOT / source["path"] / "kustomization.yaml").is_file()
    assert source["path"] == CAMPAIGN.relative_to(ROOT).as_posix()
    assert app["spec"]["destination"]["namespace"]
    (operator,) = [d for d in documents((GITOPS / "argocd-applications.yaml").read_text())
                   if d["metadata"]["name"] == "critbatch"]
    def wave(doc: dict) -> int:
        return int(doc["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"])

    assert wave(app) > wave(operator)  # the operator's chart installs the CRD first
    assert source["repoURL"] == operator["spec"]["source"]["repoURL"]


def test_flux_kustomization_waits_for_the_campaign_like_the_papers_sweeps() -> None:
    kustomization = one_document("flux-campaign.yaml", "Kustomization")
    spec = kustomization["spec"]
    assert (ROOT / spec["path"] / "kustomization.yaml").is_file()
    assert (ROOT / spec["path"]).resolve() == CAMPAIGN
    (repo,) = [d for d in documents((GITOPS / "flux.yaml").read_text())
               if d["kind"] == "GitRepository"]
    assert spec["sourceRef"] == {"kind": "GitRepository", "name": repo["metadata"]["name"]}
    assert kustomization["metadata"]["namespace"] == repo["metadata"]["namespace"]
    assert spec["wait"] is True and spec["prune"] is False and spec["targetNamespace"]
    papers = one_document("flux.yaml", "Kustomization")
    assert spec["healthCheckExprs"] == papers["spec"]["healthCheckExprs"]
