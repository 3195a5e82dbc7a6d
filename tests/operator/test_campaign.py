"""A campaign on the cluster: sweeps sharing the label critbatch.dev/campaign, two predicting
their b* from the third, run by the operator, then listed by the label as `critbatch report
--selector` lists them and reported as one experiment; the operator's metrics carry the
campaign."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fakes import NS, FakeCluster
from harness import Emulator, create_sweep, operator, phase_is, status, wait_for
from kubernetes import client
from sweeps import sweep_manifest

from critbatch.campaign import CAMPAIGN_LABEL, campaign_rows
from critbatch.campaign_report import campaign_markdown
from critbatch.spec import GROUP, PLURAL, VERSION
from critbatch_operator import opmetrics
from critbatch_operator.kube import make_api_client

pytestmark = pytest.mark.timeout(120)

# Alphabetical order would put the reference last: the campaign's order puts it first.
REFERENCE = "rmsprop"
PREDICTED = ("adabelief", "adam")


class SelectingEmulator(Emulator):
    """kmock that answers a list with a label selector as an API server does (equality terms
    only), so that a sweep outside the campaign is really left out by the selector."""

    async def _serve_list(self, request: Any) -> Any:
        payload = await super()._serve_list(request)
        terms = [t for t in (request.params.get("labelSelector") or "").split(",") if t]
        assert all("=" in t and "!" not in t for t in terms), terms
        wanted = dict(t.split("=", 1) for t in terms)
        payload["items"] = [o for o in payload["items"] if wanted.items() <= (
            (o.get("metadata") or {}).get("labels") or {}).items()]
        return payload


@pytest.fixture()
def kmock_options(kmock_options: dict[str, Any]) -> dict[str, Any]:
    return {**kmock_options, "cls": SelectingEmulator}


def campaign_sweep(name: str, campaign: str | None = "demo", **spec: Any) -> dict:
    small = {"batchSizes": [4, 8], "seeds": 1, "parallelism": 2, "pruning": {"sfoBound": False}}
    body = sweep_manifest(name, **{**small, **spec})
    if campaign is not None:
        body["metadata"]["labels"] = {CAMPAIGN_LABEL: campaign}
    return body


def list_campaign(server: str, campaign: str) -> list[dict]:
    """The campaign's sweeps as the cluster holds them, selected by their label."""
    custom = client.CustomObjectsApi(make_api_client(server))
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL,
                                                  label_selector=f"{CAMPAIGN_LABEL}={campaign}")
    return listed["items"]


def sample(metric: str, sweep: str, campaign: str = "demo", **labels: str) -> float | None:
    return opmetrics.REGISTRY.get_sample_value(
        metric, {"namespace": NS, "sweep": sweep, "campaign": campaign, **labels})


async def test_a_campaign_runs_on_the_cluster_and_reports_its_predictions(k):
    sweeps = [campaign_sweep(REFERENCE, optimizer={"name": "rmsprop"}),
              *(campaign_sweep(name, optimizer={"name": name}, reference={"sweep": REFERENCE})
                for name in PREDICTED)]
    # Not in the campaign; invalid, so it costs no trials, and still listed without a selector.
    stray = campaign_sweep("stray", campaign=None, batchSizes=[4, 4096])

    def finished() -> bool:
        return phase_is(k, "stray", "Invalid")() and all(
            phase_is(k, name, "Succeeded")() for name in (REFERENCE, *PREDICTED)) and all(
            status(k, name)["criticalBatchSize"].get("predicted") for name in PREDICTED)

    async with FakeCluster(k), operator(k):
        for body in [*reversed(sweeps), stray]:
            await create_sweep(k, body)
        await wait_for(finished, timeout=60, what="the campaign to finish with predictions")

    resources = await asyncio.to_thread(list_campaign, str(k.url).rstrip("/"), "demo")
    assert sorted(r["metadata"]["name"] for r in resources) == sorted([REFERENCE, *PREDICTED])

    rows = campaign_rows(resources)
    assert [r["sweep"] for r in rows] == [REFERENCE, *PREDICTED]
    first, *later = rows
    assert (first["reference"], first["predicted"], first["predictionHeld"]) == (
        None, None, None)
    ref = status(k, REFERENCE)["criticalBatchSize"]
    for row in later:
        cb = status(k, row["sweep"])["criticalBatchSize"]
        assert row["reference"] == REFERENCE and row["optimizer"] == row["sweep"]
        assert row["predicted"] == pytest.approx(cb["predicted"])
        assert row["predictionHeld"] is (row["predictedGrid"] in row["plausible"])
        # The reference's interval, carried over: Proposition 3.4 is linear in the ratio.
        assert row["predictedInterval"] == cb["predictedInterval"] == pytest.approx(
            [cb["predicted"] * r / ref["noiseRatio"] for r in ref["noiseRatioInterval"]],
            rel=1e-4)
        assert row["fittedInterval"] == cb["interval"]
        assert row["predictionFits"] is (row["predictedInterval"][0] <= cb["interval"][1]
                                         and cb["interval"][0] <= row["predictedInterval"][1])
    for row in rows:
        cb = status(k, row["sweep"])["criticalBatchSize"]
        assert row["phase"] == "Succeeded" and row["trialsDone"] == row["trialsTotal"] == 2
        assert (row["mostProbable"], row["resolved"]) == (cb["mostProbable"], cb["resolved"])
        assert row["sfoSpent"] > 0

    report = campaign_markdown("demo", resources)
    table = [line.split("|")[1].strip() for line in report.splitlines() if line.startswith("| ")]
    assert table == ["sweep", REFERENCE, *PREDICTED]

    for row in rows:
        name = row["sweep"]
        assert sample("critbatch_operator_sweep_phase", name, phase="Succeeded") == 1
        assert sample("critbatch_operator_sweep_progress", name) == 1
        assert sample("critbatch_operator_critical_batch_size", name,
                      kind="most_probable") == row["mostProbable"]
        assert sample("critbatch_operator_critical_batch_size", name, kind="predicted") == (
            None if row["predicted"] is None else pytest.approx(row["predicted"]))
        assert sample("critbatch_operator_critical_batch_size", name, campaign="",
                      kind="most_probable") is None
    assert sample("critbatch_operator_sweep_phase", "stray", campaign="", phase="Invalid") == 1


SUCCEEDED = {"phase": "Succeeded", "trialsDone": 2, "trialsTotal": 2, "sfoSaved": 0.0,
             "trials": [{"phase": "Reached"}, {"phase": "Reached"}],
             "criticalBatchSize": {"mostProbable": 4, "resolved": True}}


def test_a_sweep_moved_to_another_campaign_leaves_no_series_behind():
    opmetrics.record_status("ns", "moved", SUCCEEDED, "first")
    assert opmetrics.REGISTRY.get_sample_value("critbatch_operator_critical_batch_size", {
        "namespace": "ns", "sweep": "moved", "campaign": "first", "kind": "most_probable"}) == 4
    opmetrics.record_status("ns", "moved", SUCCEEDED, "second")
    opmetrics.record_status("ns", "moved", SUCCEEDED, "second")
    exposed = [s for m in opmetrics.REGISTRY.collect() for s in m.samples
               if s.labels.get("sweep") == "moved"]
    assert exposed and {s.labels["campaign"] for s in exposed} == {"second"}
    opmetrics.forget("ns", "moved")
    assert [s for m in opmetrics.REGISTRY.collect() for s in m.samples
            if s.labels.get("sweep") == "moved"] == []


@pytest.mark.parametrize(("labels", "campaign"), [
    ({CAMPAIGN_LABEL: "demo"}, "demo"),
    ({CAMPAIGN_LABEL: "a.b_c-1"}, "a.b_c-1"),
    (None, ""),
    ({"other": "demo"}, ""),
    ({CAMPAIGN_LABEL: "x" * 64}, ""),  # longer than a label value may be
    ({CAMPAIGN_LABEL: "-demo"}, ""),
    ({CAMPAIGN_LABEL: "demo\n"}, ""),
    ({CAMPAIGN_LABEL: 7}, ""),
    ("not a mapping", ""),
])
def test_the_campaign_label_is_the_sweeps_label_when_it_is_a_valid_label_value(labels,
                                                                                campaign):
    assert opmetrics.campaign_of({"labels": labels}) == campaign
