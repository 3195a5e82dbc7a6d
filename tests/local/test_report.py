"""The report: plot files, the Markdown summary, and the fitted curve drawn from the status."""

from __future__ import annotations

import math
import threading
import time

import pytest
from local_helpers import local_manifest

from critbatch import posterior, report, science


def _resource(trials: list[science.Trial], extra: list[dict] | None = None) -> dict:
    post = posterior.infer([posterior.Evidence(batch_size=t.batch_size, steps=t.steps,
                                               reached=t.reached, seed=t.seed) for t in trials],
                           sorted({t.batch_size for t in trials}))
    measured = science.measure(trials)
    return {
        **local_manifest("demo", target={"fidThreshold": 20, "maxSteps": 9000}),
        "status": {
            "phase": "Succeeded", "trialsDone": len(trials) + len(extra or []),
            "trialsTotal": len(trials) + len(extra or []),
            "trials": [{"batchSize": t.batch_size, "seed": t.seed, "phase": "Reached",
                        "steps": t.steps, "sfo": t.batch_size * t.steps, "value": 19.5,
                        "source": "prometheus"} for t in trials] + (extra or []),
            "criticalBatchSize": {
                "mostProbable": post.most_probable, "plausible": list(post.plausible),
                "probabilities": {str(b): p for b, p in post.probabilities.items()},
                "resolved": post.resolved, "confidence": post.confidence,
                "reachFraction": {str(b): f for b, f in post.reach_fraction.items()},
                "measured": measured.batch_size, "fitted": post.fitted, "nMin": post.n_min,
                "interval": list(post.interval) if post.interval else None,
                "estimates": [{"name": "rms", "optimizer": "rmsprop", "learningRate": 1e-4,
                               "beta1": 0.0, "beta2": 0.99, "batchSize": 41.3,
                               "gridBatchSize": 32, "batchSizeInterval": [30.1, 52.8]}],
                "predicted": 11.2, "predictedGrid": 8, "predictedInterval": [9.6, 14.1],
                "noiseRatio": 250.5, "noiseRatioInterval": [210, 301.2],
            },
            "warnings": ["batch size 4 censored"],
        },
    }


def _model_trials() -> list[science.Trial]:
    # N(b) = 3000 b / (b - 6) with +-3 % noise over two seeds: b* = 12.
    return [science.Trial(b, 3000 * b / (b - 6) * (1 + 0.03 * (-1) ** s), True, s)
            for b in (8, 16, 32, 64) for s in (0, 1)]


def test_fitted_curve_from_the_status_is_the_model_at_the_fitted_b_star():
    cbs = _resource(_model_trials())["status"]["criticalBatchSize"]
    p, q = report.fitted_curve(cbs)
    beta = cbs["fitted"] / 2
    for b in (8, 12, 40, 100):
        assert 1.0 / (p + q / b) == pytest.approx(cbs["nMin"] * b / (b - beta), rel=1e-9)
    assert cbs["fitted"] == pytest.approx(12, rel=0.1)
    assert report.fitted_curve({"fitted": None, "nMin": None}) is None


def test_render_writes_png_svg_and_a_summary_with_every_trial(tmp_path):
    censored = {"batchSize": 4, "seed": 0, "phase": "Censored", "steps": 9000, "sfo": 36000}
    pruned = {"batchSize": 128, "seed": 0, "phase": "Pruned", "steps": 700, "sfo": 89600,
              "reason": "cannot win"}
    resource = _resource(_model_trials(), [censored, pruned])
    files = report.render(resource, tmp_path / "out")
    assert files.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in files.svg.read_text()[:500]
    md = files.markdown.read_text()
    rows = [ln for ln in md.splitlines()
            if ln.startswith("| ") and ln[2].isdigit() and ln.count("|") == 9]
    assert len(rows) == 8 + 2  # the reached trials, the censored one and the pruned one
    assert "| 4 | 0 | Censored | 9000 | 36000 | — | no |" in md
    assert "| 128 | 0 | Pruned | 700 | 89600 | — | no |" in md
    cbs = resource["status"]["criticalBatchSize"]
    assert f"**b\\* = {cbs['mostProbable']}**" in md and "plausible set at 95 %" in md
    assert f"| {cbs['mostProbable']} | {report.fmt(cbs['probabilities'][str(16)], 3)} |" in md
    assert f"descriptive): {cbs['measured']}" in md
    assert (f"{report.fmt(cbs['fitted'])}, 95 % credible interval "
            f"[{report.fmt(cbs['interval'][0])}") in md
    assert "| rms | rmsprop |" in md and "| 41.3 | [30.1, 52.8] | 32 |" in md
    assert ("**b\\* predicted** (Proposition 3.4, reference noise ratio): 11.2 (grid: 8), "
            "interval [9.6, 14.1] from the reference's fitted b\\*'s 95 % interval") in md
    assert "noise ratio σ²/ε³ = 250.5, interval [210, 301.2] from the fitted b\\*'s" in md
    assert "batch size 4 censored" in md
    assert "![N(b) and SFO(b)](critbatch.png)" in md


def test_a_report_drawn_while_matplotlib_warms_up_waits_for_it_and_is_whole(tmp_path,
                                                                          monkeypatch):
    """A run starts the warm-up and may end at once (a resumed finished run): the report
    waits for the warm-up thread instead of drawing beside it."""
    warm = report._draw_nothing

    def slow_warm_up() -> None:  # still running when the report starts
        time.sleep(2)
        warm()

    monkeypatch.setattr(report, "_warming", None)
    monkeypatch.setattr(report, "_draw_nothing", slow_warm_up)
    report.warm_up()
    files = report.render(_resource(_model_trials()), tmp_path)
    assert not [t for t in threading.enumerate() if t.name == "critbatch-report-warm-up"]
    assert files.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert files.svg.read_text().rstrip().endswith("</svg>")


def test_a_fit_that_is_not_identifiable_is_said_not_drawn(tmp_path):
    resource = _resource([science.Trial(16, 2000, True)])
    resource["status"]["criticalBatchSize"].update(
        fitted=None, nMin=None, notIdentifiable="fit: needs two batch sizes")
    md = report.summary_markdown(resource)
    assert "**b\\* fitted**: not identifiable: fit: needs two batch sizes" in md
    fig = report.plot(resource)
    labels = [line.get_label() for ax in fig.axes for line in ax.get_lines()]
    assert not any(label.startswith("fit") for label in labels)
    assert any(label.startswith("b* measured = 16") for label in labels)


@pytest.mark.parametrize(("resource", "field"), [
    ([], "input"),
    ({"kind": "Job", "status": {"x": 1}}, "kind"),
    ({"kind": "CriticalBatchSweep", "metadata": {"name": "x"}, "spec": {}}, "status"),
    ({"kind": "CriticalBatchSweep", "status": {"trials": "no"}}, "status.trials"),
])
def test_bad_input_names_the_field(resource, field):
    with pytest.raises(report.ReportError, match=f"^{field}:"):
        report.check_resource(resource)


def test_numbers_are_shown_plainly():
    assert report.fmt(2000.0) == "2000"
    assert report.fmt(78769.2) == "78769"
    assert report.fmt(12.3456) == "12.35"
    assert report.fmt(None) == "—"
    assert report.fmt(math.nan) == "—"


def test_the_summary_says_where_the_trials_ran():
    resource = _resource(_model_trials())
    for t in resource["status"]["trials"]:
        t["hardware"] = "cpu AMD EPYC 7763 (AVX2), 1 thread, torch 2.14.1"
    assert "Every trial ran on: cpu AMD EPYC 7763 (AVX2)" in report.summary_markdown(resource)
    resource["status"]["trials"][0]["hardware"] = "cuda NVIDIA H200, torch 2.14.1"
    md = report.summary_markdown(resource)
    assert "**The trials ran on different hardware**" in md
    assert "- cuda NVIDIA H200, torch 2.14.1: b/seed 8/s0" in md
