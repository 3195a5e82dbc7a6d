"""Reference sweeps without a cluster: spec.reference.sweep resolves to a finished local run.

The operator reads a reference sweep's noise ratio from the namespace; `critbatch run` reads
it from that sweep's run beside its own output (runs/<name>/) or from --reference-run. The
FAKE trainer reports Θ = 1000 and |S| = 1797, so every prediction is known by hand.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from local_helpers import FAKE_TRAINER, local_manifest, run_events

from critbatch.cli import main
from critbatch.local.options import RunOptions
from critbatch.local.progress import Progress
from critbatch.local.runner import LocalRun
from critbatch.planner import reference_from_status

PARAMS, SIZE = 1000, 1797  # what the fake trainer reports

pytestmark = pytest.mark.usefixtures("fast_fake")


def rmsprop_target(name: str = "target", lr: float = 5e-3, **spec) -> dict:
    """Another optimizer on the same (fake) architecture, naming `ref` as its reference."""
    spec = {"optimizer": {"name": "rmsprop", "generator": {"learningRate": lr},
                          "discriminator": {"learningRate": lr}},
            "reference": {"sweep": "ref"}, **spec}
    return local_manifest(name, **spec)


def rmsprop_prediction(ratio: float, lr: float) -> float:
    """Proposition 3.4 for RMSProp by hand: b* = r·α / D, D = √Θ / |S|."""
    return ratio * lr / (math.sqrt(PARAMS) / SIZE)


def reference_status(ratio: float | None, phase: str = "Succeeded") -> dict:
    cbs = {"measured": 16 if ratio else None, "noiseRatio": ratio,
           "generatorParams": PARAMS if ratio else None, "datasetSize": SIZE}
    return {"phase": phase, "trials": [], "criticalBatchSize": cbs}


def planned(manifest: dict, out: Path, **options) -> dict:
    """The status of one planning round, before any trial starts."""
    runner = LocalRun(manifest, RunOptions(out_dir=out, trainer_command=FAKE_TRAINER, **options))
    runner.prepare()
    return runner.plan().status


class FirstStatus(Progress):
    def __init__(self) -> None:
        self.first: dict | None = None

    def update(self, status, trials, elapsed):
        if self.first is None:
            self.first = dict(status)


def test_a_finished_sibling_run_predicts_b_star_before_any_trial_finishes(tmp_path):
    runs = tmp_path / "runs"
    ref = LocalRun(local_manifest("ref", batchSizes=[8, 16, 32, 64]),
                   RunOptions(out_dir=runs / "ref", trainer_command=FAKE_TRAINER,
                              poll_interval=0.1))
    ref.run()
    ratio = ref.status["criticalBatchSize"]["noiseRatio"]
    low, high = ref.status["criticalBatchSize"]["noiseRatioInterval"]
    assert ref.status["criticalBatchSize"]["measured"] == 16 and low <= ratio <= high

    seen = FirstStatus()
    target = LocalRun(rmsprop_target(batchSizes=[16, 32, 64, 128]),
                      RunOptions(out_dir=runs / "target", trainer_command=FAKE_TRAINER,
                                 poll_interval=0.1), seen)
    target.run()
    first = seen.first
    assert first is not None
    assert all(t["phase"] in ("Pending", "Running") for t in first["trials"])
    expected = rmsprop_prediction(ratio, 5e-3)
    assert first["criticalBatchSize"]["predicted"] == pytest.approx(expected, rel=1e-5)
    assert first["criticalBatchSize"]["predictedGrid"] == min(
        (16, 32, 64, 128), key=lambda b: (abs(b - expected), b))
    assert first["criticalBatchSize"]["predictedInterval"] == pytest.approx(
        [rmsprop_prediction(low, 5e-3), rmsprop_prediction(high, 5e-3)], rel=1e-5)
    final = target.status
    assert final["phase"] == "Succeeded"
    assert final["criticalBatchSize"]["predicted"] == first["criticalBatchSize"]["predicted"]
    assert final["criticalBatchSize"]["measured"] == 16  # the fake's N(b) ignores the optimizer
    assert not [w for w in final["warnings"] if "reference" in w]
    logged = [e["event"] for e in run_events(runs / "target")]
    assert logged.count("reference") == 1 and logged.count("predicted") == 1
    assert logged.index("predicted") < logged.index("finished")  # said at once, not at the end
    said = next(e for e in run_events(runs / "target") if e["event"] == "predicted")
    assert said["b_star"] == first["criticalBatchSize"]["predicted"]
    assert said["noise_ratio"] == ratio
    assert said["interval"] == first["criticalBatchSize"]["predictedInterval"]


def test_a_missing_reference_is_a_warning_and_the_sweep_still_plans(tmp_path):
    status = planned(rmsprop_target(), tmp_path / "runs" / "target")
    assert status["phase"] == "Running"  # trials start anyway
    assert status["criticalBatchSize"]["predicted"] is None
    text = "\n".join(status["warnings"])
    assert f"no finished run in {tmp_path / 'runs' / 'ref'}" in text
    assert "reference sweep 'ref' has no noise ratio yet" in text  # the operator's warning


def test_an_unfinished_reference_warns_and_is_picked_up_once_it_has_a_ratio(tmp_path):
    ref_dir = tmp_path / "runs" / "ref"
    ref_dir.mkdir(parents=True)
    (ref_dir / "status.yaml").write_text(yaml.safe_dump(reference_status(None, "Running")))
    runner = LocalRun(rmsprop_target(), RunOptions(out_dir=tmp_path / "runs" / "target",
                                                   trainer_command=FAKE_TRAINER))
    runner.prepare()
    before = runner.plan().status
    assert before["criticalBatchSize"]["predicted"] is None
    assert any("has no measured b* yet (phase Running)" in w for w in before["warnings"])

    (ref_dir / "status.yaml").write_text(yaml.safe_dump(reference_status(400.0)))
    after = runner.plan().status  # the reference finished meanwhile: no restart needed
    assert after["criticalBatchSize"]["predicted"] == pytest.approx(
        rmsprop_prediction(400.0, 5e-3), rel=1e-5)
    assert not [w for w in after["warnings"] if "reference" in w]


@pytest.mark.parametrize("form", ["dir", "status", "resource"])
def test_reference_run_names_a_run_anywhere(tmp_path, form):
    """--reference-run takes a run directory, its status.yaml, or a whole resource YAML."""
    elsewhere = tmp_path / "old" / "adam-sweep"
    elsewhere.mkdir(parents=True)
    status = reference_status(250.0)
    (elsewhere / "status.yaml").write_text(yaml.safe_dump(status))
    resource = {**local_manifest("adam-sweep"), "status": status}
    (elsewhere / "cbs.yaml").write_text(yaml.safe_dump(resource))
    path = {"dir": elsewhere, "status": elsewhere / "status.yaml",
            "resource": elsewhere / "cbs.yaml"}[form]
    manifest = rmsprop_target(lr=2e-3)
    del manifest["spec"]["reference"]  # no spec.reference at all: the option alone suffices
    got = planned(manifest, tmp_path / "runs" / "target", reference_run=path)
    assert got["criticalBatchSize"]["predicted"] == pytest.approx(
        rmsprop_prediction(250.0, 2e-3), rel=1e-5)


def test_reference_noise_ratio_on_the_command_line_wins_over_a_reference_run(tmp_path):
    ref_dir = tmp_path / "runs" / "ref"
    ref_dir.mkdir(parents=True)
    (ref_dir / "status.yaml").write_text(yaml.safe_dump(reference_status(250.0)))
    manifest = rmsprop_target()
    manifest["spec"]["reference"]["generatorParams"] = PARAMS  # Θ before any trial's result
    got = planned(manifest, tmp_path / "runs" / "target", reference_noise_ratio=100.0)
    assert got["criticalBatchSize"]["predicted"] == pytest.approx(
        rmsprop_prediction(100.0, 5e-3), rel=1e-5)


def test_a_reference_that_is_this_run_itself_is_ignored_with_a_warning(tmp_path):
    out = tmp_path / "runs" / "ref"
    out.mkdir(parents=True)
    (out / "status.yaml").write_text(yaml.safe_dump(reference_status(250.0)))
    got = planned(rmsprop_target(name="ref"), out, resume=True)
    assert got["criticalBatchSize"]["predicted"] is None
    assert any("names this run itself" in w for w in got["warnings"])


def test_reference_from_status_reads_only_usable_numbers():
    assert reference_from_status(reference_status(250.0)) == (250.0, PARAMS, SIZE, None)
    assert reference_from_status(None) == (None, None, None, None)
    bad = {"criticalBatchSize": {"noiseRatio": "250", "generatorParams": -3, "datasetSize": True,
                                 "noiseRatioInterval": [200, 300]}}
    assert reference_from_status(bad) == (None, None, None, None)  # no ratio: no interval
    for interval, read in (([200, 300.5], (200.0, 300.5)), ([300, 300], (300.0, 300.0)),
                           ([300, 200], None), ([0, 300], None), ([200, float("inf")], None),
                           ([200], None), ("ab", None), ([True, 300], None), (None, None)):
        status = reference_status(250.0)
        status["criticalBatchSize"]["noiseRatioInterval"] = interval
        assert reference_from_status(status).noise_ratio_interval == read, interval


def test_the_command_line_predicts_from_the_sibling_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ref_dir = tmp_path / "runs" / "ref"
    ref_dir.mkdir(parents=True)
    (ref_dir / "status.yaml").write_text(yaml.safe_dump(reference_status(400.0)))
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(rmsprop_target(batchSizes=[16, 32])))
    code = main(["run", "t.yaml", "--quiet", "--trainer", " ".join(FAKE_TRAINER)])
    line = capsys.readouterr().out.strip()
    assert code == 0
    expected = rmsprop_prediction(400.0, 5e-3)
    assert ", measured 16, " in line and "b* 16 (P " in line
    assert f"predicted {expected:.4g} (grid 32)" in line, line  # 114 is nearer 32 than 16
    assert yaml.safe_load((tmp_path / "runs" / "target" / "status.yaml").read_text())[
        "criticalBatchSize"]["predicted"] == pytest.approx(expected, rel=1e-5)
