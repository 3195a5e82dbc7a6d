"""The report: plot files, the Markdown summary, and the fitted curve drawn from the status."""

from __future__ import annotations

import math

import pytest

from critbatch import report, science


def _resource(trials: list[science.Trial], extra: list[dict] | None = None) -> dict:
    fit = science.fit(trials, rng=0)
    measured = science.measure(trials)
    return {
        "apiVersion": "critbatch.dev/v1alpha1", "kind": "CriticalBatchSweep",
        "metadata": {"name": "demo"},
        "spec": {"target": {"fidThreshold": 20, "maxSteps": 9000}},
        "status": {
            "phase": "Succeeded", "trialsDone": len(trials) + len(extra or []),
            "trialsTotal": len(trials) + len(extra or []),
            "trials": [{"batchSize": t.batch_size, "seed": t.seed, "phase": "Reached",
                        "steps": t.steps, "sfo": t.batch_size * t.steps, "fid": 19.5,
                        "source": "prometheus"} for t in trials] + (extra or []),
            "criticalBatchSize": {
                "measured": measured.batch_size, "fitted": fit.batch_size, "nMin": fit.n_min,
                "interval": list(fit.interval) if fit.interval else None,
                "estimates": [{"name": "rms", "optimizer": "rmsprop", "learningRate": 1e-4,
                               "beta1": 0.0, "beta2": 0.99, "batchSize": 41.3,
                               "gridBatchSize": 32}],
            },
            "warnings": ["batch size 4 censored"],
        },
    }


def _model_trials() -> list[science.Trial]:
    # N(b) = 3000 b / (b - 6) with +-3 % noise over two seeds: b* = 12.
    return [science.Trial(b, 3000 * b / (b - 6) * (1 + 0.03 * (-1) ** s), True, s)
            for b in (8, 16, 32, 64) for s in (0, 1)]


def test_fitted_curve_from_the_status_is_the_science_fit():
    trials = _model_trials()
    fit = science.fit(trials, rng=0)
    p, q = report.fitted_curve({"fitted": fit.batch_size, "nMin": fit.n_min})
    for b in (8, 12, 40, 100):
        assert 1.0 / (p + q / b) == pytest.approx(fit.steps(b), rel=1e-9)
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
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    assert len(rows) == 8 + 2  # the reached trials, the censored one and the pruned one
    assert "| 4 | 0 | Censored | 9000 | 36000 | — | no |" in md
    assert "| 128 | 0 | Pruned | 700 | 89600 | — | no |" in md
    cbs = resource["status"]["criticalBatchSize"]
    assert f"(least SFO on the grid): {cbs['measured']}" in md
    assert f"{report.fmt(cbs['fitted'])}, interval [{report.fmt(cbs['interval'][0])}" in md
    assert "| rms | rmsprop |" in md and "| 41.3 | 32 |" in md
    assert "batch size 4 censored" in md
    assert "![N(b) and SFO(b)](critbatch.png)" in md


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
