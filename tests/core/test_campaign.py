"""Campaigns (critbatch.campaign): the order references impose, the campaign's name, and the
rows of its table from hand-written statuses, hostile ones refused with the field named."""

from __future__ import annotations

import itertools
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sweeps import sweep_manifest

from critbatch.campaign import (
    CAMPAIGN_LABEL,
    MAX_SWEEPS,
    CampaignError,
    campaign_name,
    campaign_order,
    campaign_rows,
)
from critbatch.errors import InputError

EXAMPLES = settings(max_examples=150, deadline=None)


def _sweep(name: str, reference: str | None = None, campaign: str | None = "t3",
           status: dict | None = None, **spec) -> dict:
    body = sweep_manifest(name, **spec)
    if reference is not None:
        body["spec"]["reference"] = {"sweep": reference}
    if campaign is not None:
        body["metadata"]["labels"] = {CAMPAIGN_LABEL: campaign}
    if status is not None:
        body["status"] = status
    return body


def _names(order: list[dict]) -> list[str]:
    return [m["metadata"]["name"] for m in order]


NAMES = st.lists(st.text("abcdefgh-", min_size=1, max_size=4), min_size=1, max_size=12,
                 unique=True)


@st.composite
def acyclic(draw) -> list[dict]:
    """Sweeps whose references (to an earlier sweep of a hidden order, or to one outside the
    set, or none) cannot form a cycle, handed over in a shuffled order."""
    names = draw(NAMES)
    sweeps = []
    for i, name in enumerate(names):
        choice = draw(st.integers(-2, i - 1))
        ref = None if choice == -2 else "outside" if choice == -1 else names[choice]
        sweeps.append(_sweep(name, ref))
    return draw(st.permutations(sweeps))


@EXAMPLES
@given(acyclic(), st.randoms(use_true_random=False))
def test_order_is_a_permutation_with_every_reference_first_whatever_the_input_order(
        sweeps, rnd):
    order = campaign_order(sweeps)
    names = _names(order)
    assert sorted(names) == sorted(_names(sweeps))
    position = {n: i for i, n in enumerate(names)}
    for m in order:
        ref = (m["spec"].get("reference") or {}).get("sweep")
        if ref in position:
            assert position[ref] < position[m["metadata"]["name"]], (ref, names)
    shuffled = list(sweeps)
    rnd.shuffle(shuffled)
    assert _names(campaign_order(shuffled)) == names


@EXAMPLES
@given(acyclic())
def test_ties_go_by_name_so_sweeps_without_references_come_sorted(sweeps):
    free = [_sweep(m["metadata"]["name"]) for m in sweeps]
    assert _names(campaign_order(free)) == sorted(_names(free))


@EXAMPLES
@given(NAMES.flatmap(lambda names: st.tuples(
    st.just(names), st.lists(st.sampled_from([None, *names]), min_size=len(names),
                             max_size=len(names)))))
def test_a_cycle_is_refused_naming_exactly_the_sweeps_on_it(case):
    names, refs = case
    sweeps = [_sweep(n, r) for n, r in zip(names, refs, strict=True)]
    points_to = dict(zip(names, refs, strict=True))
    on_cycles = set()
    for start in names:
        seen, at = [], start
        while at is not None and at not in seen:
            seen.append(at)
            at = points_to[at]
        if at is not None:
            on_cycles |= set(seen[seen.index(at):])
    if not on_cycles:
        campaign_order(sweeps)
        return
    with pytest.raises(CampaignError, match=r"^spec\.reference\.sweep: ") as err:
        campaign_order(sweeps)
    message = str(err.value)
    itself = re.search(r"sweep '(.*)' references itself$", message)
    chain = [itself[1]] * 2 if itself else message.split("cycle: ", 1)[1].split(" -> ")
    assert chain[0] == chain[-1] and len(set(chain)) == len(chain) - 1, message
    for here, there in itertools.pairwise(chain):
        assert points_to[here] == there, message  # a real cycle, each step a reference
    assert set(chain) <= on_cycles


def test_a_cycle_and_a_self_reference_read_plainly():
    with pytest.raises(CampaignError) as err:
        campaign_order([_sweep("adam", "rms"), _sweep("rms", "adam"), _sweep("sgd")])
    assert str(err.value) == ("spec.reference.sweep: the sweeps reference each other in a "
                              "cycle: adam -> rms -> adam")
    with pytest.raises(CampaignError) as err:
        campaign_order([_sweep("adam", "adam")])
    assert str(err.value) == "spec.reference.sweep: sweep 'adam' references itself"


def test_a_name_given_twice_is_refused_naming_it_and_both_places():
    with pytest.raises(CampaignError) as err:
        campaign_order([_sweep("adam"), _sweep("rms"), _sweep("adam")])
    assert str(err.value) == "metadata.name: 'adam' is given twice (items[0] and items[2])"


def test_a_reference_outside_the_campaign_is_no_edge():
    assert _names(campaign_order([_sweep("b", "elsewhere"), _sweep("a")])) == ["a", "b"]


def test_campaign_name_is_the_shared_label_and_two_labels_are_refused():
    assert campaign_name([_sweep("a"), _sweep("b")]) == "t3"
    assert campaign_name([_sweep("a", campaign=None), _sweep("b")]) == "t3"
    assert campaign_name([_sweep("a", campaign=None)]) is None
    with pytest.raises(CampaignError) as err:
        campaign_name([_sweep("a"), _sweep("b", campaign=None), _sweep("c", campaign="other")])
    message = str(err.value)
    assert message.startswith(f"metadata.labels.{CAMPAIGN_LABEL}: ")
    assert "sweep 'a' is in campaign 't3', sweep 'c' in 'other'" in message


def _trials(*rows: tuple[int, str, float]) -> list[dict]:
    return [{"batchSize": b, "seed": 0, "phase": phase, "steps": steps, "sfo": b * steps}
            for b, phase, steps in rows]


def _status(**cbs) -> dict:
    return {"phase": "Succeeded", "trialsDone": 3, "trialsTotal": 3, "sfoSaved": 1200,
            "trials": _trials((4, "Reached", 500), (8, "Reached", 300), (16, "Pruned", 75)),
            "criticalBatchSize": {"confidence": 0.95, "resolved": True, **cbs}}


RMS = {"name": "rmsprop", "learningRate": 0.0001, "beta1": 0.0, "beta2": 0.99}


def test_rows_follow_the_campaign_order_and_say_whether_each_prediction_held():
    sweeps = [
        _sweep("rms", "adam", status=_status(mostProbable=4, plausible=[4], predicted=9.5,
                                             predictedGrid=8, optimizer=RMS)),
        _sweep("adabelief", "adam", status=_status(mostProbable=16, plausible=[8, 16],
                                                   resolved=False, predicted=15.2,
                                                   predictedGrid=16)),
        _sweep("adam", status=_status(mostProbable=8, plausible=[8], measured=8, fitted=7.9)),
        _sweep("early", "adam", status=_status(predicted=12.0, predictedGrid=16)),
        _sweep("later", "adam"),
    ]
    rows = campaign_rows(sweeps)
    assert [r["sweep"] for r in rows] == ["adam", "adabelief", "early", "later", "rms"]
    by = {r["sweep"]: r for r in rows}
    assert by["rms"] == {
        "sweep": "rms", "phase": "Succeeded", "optimizer": "rmsprop", "learningRate": 0.0001,
        "beta1": 0, "beta2": 0.99, "reference": "adam", "mostProbable": 4, "plausible": [4],
        "resolved": True, "confidence": 0.95, "measured": None, "fitted": None,
        "fittedInterval": None, "predicted": 9.5, "predictedInterval": None,
        "predictedGrid": 8, "predictionHeld": False, "predictionFits": None, "trialsDone": 3,
        "trialsTotal": 3, "sfoSpent": 4 * 500 + 8 * 300 + 16 * 75, "sfoSaved": 1200,
    }
    assert by["adabelief"]["predictionHeld"] is True
    assert by["adabelief"]["resolved"] is False and by["adabelief"]["plausible"] == [8, 16]
    assert by["adam"]["predictionHeld"] is None and by["adam"]["reference"] is None
    assert (by["adam"]["measured"], by["adam"]["fitted"]) == (8, 7.9)
    assert by["early"]["predictionHeld"] is None  # predicted, but no plausible set yet
    assert by["later"]["phase"] == "Pending" and by["later"]["sfoSpent"] == 0
    assert by["later"]["mostProbable"] is None and by["later"]["plausible"] == []


@pytest.mark.parametrize(("predicted", "fitted", "fits"), [
    ({"predictedInterval": [7.4, 11.9]}, [3.2, 6.2], False),  # the digits' RMSProp: apart
    ({"predictedInterval": [7.4, 11.9]}, [1.5, 9.0], True),  # overlapping ends
    ({"predictedInterval": [7.4, 11.9]}, [11.9, 20], True),  # touching counts
    ({}, [6.0, 10.0], True),  # no interval: the value itself
    ({}, [3.2, 6.2], False),
    ({"predictedInterval": [7.4, 11.9]}, None, None),  # no fit: nothing to judge
])
def test_the_prediction_is_set_against_the_fitted_b_star_and_its_interval(predicted, fitted,
                                                                           fits):
    """Proposition 3.4 speaks of the b* of N(b): its prediction's interval is judged against
    the fitted b*'s credible interval, which stalled seeds do not move, beside the plausible
    set, which they do."""
    status = _status(mostProbable=4, plausible=[4, 8], resolved=False, predicted=9.5,
                     predictedGrid=8, fitted=4.8, interval=fitted, **predicted)
    row, = campaign_rows([_sweep("rms", "adam", status=status)])
    assert (row["predictionHeld"], row["predictionFits"]) == (True, fits)
    assert row["fittedInterval"] == fitted
    assert row["predictedInterval"] == predicted.get("predictedInterval")


def test_without_a_status_optimizer_the_row_takes_the_spec_generator():
    spec_optimizer = {"name": "adabelief",
                      "generator": {"learningRate": 0.0002, "beta1": 0.5, "beta2": 0.999}}
    row, = campaign_rows([_sweep("a", optimizer=spec_optimizer)])
    assert (row["optimizer"], row["learningRate"], row["beta1"], row["beta2"]) == (
        "adabelief", 0.0002, 0.5, 0.999)
    row, = campaign_rows([_sweep("a", optimizer=spec_optimizer,
                                 status=_status(optimizer=RMS))])
    assert (row["optimizer"], row["learningRate"]) == ("rmsprop", 0.0001)


def test_sfo_spent_counts_trials_without_an_sfo_by_their_steps():
    status = _status()
    status["trials"] = [{"batchSize": 32, "seed": 0, "phase": "Running", "steps": 10},
                        {"batchSize": 4, "seed": 1, "phase": "Pending"}]
    row, = campaign_rows([_sweep("a", status=status)])
    assert row["sfoSpent"] == 320


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m["status"]["criticalBatchSize"].update(plausible=[0]),
     "a: status.criticalBatchSize.plausible[0]: expected a batch size (an integer in "
     "1..1048576), got 0"),
    (lambda m: m["status"]["criticalBatchSize"].update(predictedGrid="eight"),
     "a: status.criticalBatchSize.predictedGrid: expected a number, got 'eight'"),
    (lambda m: m["status"]["criticalBatchSize"].update(mostProbable=2.5),
     "a: status.criticalBatchSize.mostProbable: expected a batch size"),
    (lambda m: m["status"]["criticalBatchSize"].update(predicted=-3),
     "a: status.criticalBatchSize.predicted: expected a number > 0, got -3"),
    (lambda m: m["status"]["criticalBatchSize"].update(interval=[6, 3]),
     "a: status.criticalBatchSize.interval: expected low <= high, got [6, 3]"),
    (lambda m: m["status"]["criticalBatchSize"].update(predictedInterval=[6]),
     "a: status.criticalBatchSize.predictedInterval: expected [low, high], got '[6]'"),
    (lambda m: m["status"]["criticalBatchSize"].update(predictedInterval=[None, 6]),
     "a: status.criticalBatchSize.predictedInterval: expected two numbers"),
    (lambda m: m["status"]["criticalBatchSize"].update(interval=[0, 6]),
     "a: status.criticalBatchSize.interval[0]: expected a number > 0, got 0"),
    (lambda m: m["status"]["criticalBatchSize"].update(resolved="yes"),
     "a: status.criticalBatchSize.resolved: expected true or false, got 'yes'"),
    (lambda m: m["status"]["criticalBatchSize"].update(confidence=3),
     "a: status.criticalBatchSize.confidence: expected a probability in 0..1, got 3"),
    (lambda m: m["status"]["criticalBatchSize"].update(optimizer={"learningRate": "fast"}),
     "a: status.criticalBatchSize.optimizer.learningRate: expected a number, got 'fast'"),
    (lambda m: m["status"]["criticalBatchSize"].update(optimizer=[RMS]),
     "a: status.criticalBatchSize.optimizer: expected a mapping"),
    (lambda m: m["status"]["trials"][0].update(sfo="lots"),
     "a: status.trials[0].sfo: expected a number, got 'lots'"),
    (lambda m: m["status"].update(sfoSaved=float("inf")),
     "a: status.sfoSaved: expected a number, got 'inf'"),
    (lambda m: m["status"].update(phase=["Succeeded"]),
     "a: status.phase: expected a string"),
    (lambda m: m.update(status=[1]), "a: status: expected a mapping"),
    (lambda m: m.update(kind="Pod"), "a: kind: expected CriticalBatchSweep, got 'Pod'"),
    (lambda m: m["spec"].update(reference={"sweep": 5}),
     "a: spec.reference.sweep: expected a sweep's name, got '5'"),
    (lambda m: m["spec"].update(optimizer="adam"), "a: spec.optimizer: expected a mapping"),
    (lambda m: m["metadata"].update(labels={CAMPAIGN_LABEL: 7}),
     f"a: metadata.labels.{CAMPAIGN_LABEL}: expected a label value"),
    (lambda m: m["metadata"].update(labels="t3"), "a: metadata.labels: expected a mapping"),
    (lambda m: m["metadata"].pop("name"), "items[0].metadata.name: expected the sweep's name"),
    (lambda m: m.pop("metadata"), "items[0].metadata: expected a mapping"),
])
def test_hostile_rows_are_refused_naming_the_sweep_and_the_field(change, message):
    sweep = _sweep("a", status=_status(mostProbable=4, plausible=[4], predicted=5.0,
                                       predictedGrid=4))
    change(sweep)
    with pytest.raises(CampaignError) as err:
        campaign_rows([sweep, _sweep("b")])
    assert str(err.value).startswith(message), str(err.value)
    assert isinstance(err.value, InputError)


def test_hostile_text_is_shown_printable_and_bounded():
    status = _status(optimizer={**RMS, "name": "rms\x1b[31m" + "x" * 500})
    status["phase"] = "Done\x07"
    row, = campaign_rows([_sweep("a", status=status)])
    assert row["phase"] == "Done?"
    assert row["optimizer"].startswith("rms?[31m") and len(row["optimizer"]) <= 63


def test_a_campaign_is_bounded_and_must_be_a_list():
    with pytest.raises(CampaignError, match=rf"^items: {MAX_SWEEPS + 1} sweeps, more than"):
        campaign_order([_sweep(f"s{i}") for i in range(MAX_SWEEPS + 1)])
    with pytest.raises(CampaignError, match=r"^items: expected a list"):
        campaign_rows("adam")
    with pytest.raises(CampaignError, match=r"^items\[1\]: expected a CriticalBatchSweep"):
        campaign_order([_sweep("a"), 3])


def test_rows_do_not_depend_on_the_input_order():
    sweeps = [_sweep(n, "a" if n != "a" else None, status=_status(mostProbable=4,
                                                                  plausible=[4]))
              for n in "abcde"]
    rows = campaign_rows(sweeps)
    random.Random(7).shuffle(sweeps)
    assert campaign_rows(sweeps) == rows
