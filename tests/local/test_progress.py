"""Progress views: ETA from the step rate, JSON lines for scripts, the rich table."""

from __future__ import annotations

import errno
import io
import json

import pytest
from rich.console import Console

from critbatch.local.progress import (
    GuardedProgress,
    JsonProgress,
    Progress,
    RateMeter,
    RichProgress,
    TrialView,
    duration,
    headline,
)

STATUS = {
    "phase": "Running", "trialsDone": 1, "trialsTotal": 3,
    "target": {"metric": "fid", "threshold": 20.0, "goal": "minimize"},
    "criticalBatchSize": {"mostProbable": 16, "plausible": [16], "resolved": True,
                          "probabilities": {"16": 0.97, "32": 0.03}, "measured": 16,
                          "fitted": 14.2, "interval": [11.0, 19.5]},
}
VIEWS = [
    TrialView(batch_size=16, seed=0, phase="Reached", step=2000, max_steps=3000, value=19.5,
              sfo=32000, eta_seconds=None, restarts=0, source="prometheus"),
    TrialView(batch_size=32, seed=0, phase="Running", step=500, max_steps=3000, value=48.25,
              sfo=16000, eta_seconds=125.0, restarts=1, source="direct"),
    TrialView(batch_size=64, seed=0, phase="Pending", max_steps=3000),
]


def test_eta_is_the_time_to_the_step_budget_at_the_recent_rate():
    meter = RateMeter(window=60)
    assert meter.eta(0, 1000) is None
    meter.add(100, now=10.0)
    meter.add(300, now=20.0)  # 20 steps/s
    assert meter.rate() == 20.0
    assert meter.eta(300, 1000) == 35.0
    meter.add(50, now=21.0)  # restarted from an earlier checkpoint: the old rate is void
    assert meter.rate() is None


def test_rate_forgets_samples_older_than_its_window():
    meter = RateMeter(window=10)
    meter.add(0, now=0.0)
    meter.add(10, now=5.0)
    meter.add(110, now=15.0)  # the first sample falls out: 100 steps in 10 s
    assert meter.rate() == 10.0


def test_json_progress_writes_one_parseable_record_per_line():
    out = io.StringIO()
    view = JsonProgress(out, every=3600)
    view.start("demo", "runs/demo", 3)
    view.update(STATUS, VIEWS, 12.34)
    view.update(STATUS, VIEWS, 13.0)  # inside the period: not written
    view.event("restart", batch_size=32, seed=0)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["event"] for r in records] == ["start", "progress", "restart"]
    progress = records[1]
    assert progress["trialsDone"] == 1 and progress["elapsed"] == 12.3
    assert progress["trials"][1] == {"batch_size": 32, "seed": 0, "phase": "Running",
                                     "step": 500, "max_steps": 3000, "value": 48.25,
                                     "sfo": 16000, "eta_seconds": 125.0, "restarts": 1,
                                     "source": "direct"}


def test_rich_table_shows_state_step_metric_and_eta_per_trial():
    console = Console(file=io.StringIO(), width=140, record=True)
    view = RichProgress(console)
    console.print(view.render(STATUS, VIEWS, 75))
    text = console.export_text()
    lines = {ln.split("│")[1].strip(): ln for ln in text.splitlines() if ln.count("│") > 5}
    assert "Running" in lines["32"] and "500/3000" in lines["32"]
    assert "│ fid " in text.splitlines()[2] or " fid " in text
    assert "48.25" in lines["32"] and "2m05s" in lines["32"]
    assert "Reached" in lines["16"] and "prometheus" in lines["16"]
    assert "Pending" in lines["64"]
    assert "b* 16 (P 0.97, resolved), measured 16, fitted 14.2 [11, 19.5]" in text
    assert "elapsed 1m15s" in text


def test_headline_and_durations():
    assert headline({"phase": "Pending", "trialsTotal": 2}).startswith("Pending, trials 0/2")
    assert "not identifiable" in headline(
        {"criticalBatchSize": {"notIdentifiable": "fit: needs two batch sizes"}})
    unresolved = {"mostProbable": 8, "plausible": [8, 16], "resolved": False,
                  "probabilities": {"8": 0.6, "16": 0.4}}
    assert "b* 8 (P 0.60, unresolved: 8, 16)" in headline({"criticalBatchSize": unresolved})
    assert "b* —" in headline({"criticalBatchSize": {}})
    predicted = {"fitted": 4.8, "interval": [3.2, 6.2], "predicted": 9.487,
                 "predictedInterval": [7.43, 11.87], "predictedGrid": 8}
    assert headline({"criticalBatchSize": predicted}).endswith(
        ", fitted 4.8 [3.2, 6.2], predicted 9.487 [7.43, 11.87] (grid 8)")
    assert duration(5) == "5s" and duration(3725) == "1h02m" and duration(None) == "—"


class _ClosedPipe(Progress):
    def __init__(self) -> None:
        self.calls = 0

    def event(self, kind, **fields):
        self.calls += 1
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")


def test_a_view_whose_output_is_gone_goes_quiet_and_says_why():
    inner = _ClosedPipe()
    view = GuardedProgress(inner)
    view.event("start", pid=1)
    view.event("finished", pid=1)
    assert view.closed == "output closed: broken pipe"
    assert inner.calls == 1


def test_another_os_error_of_a_view_is_raised():
    class Full(Progress):
        def event(self, kind, **fields):
            raise OSError(errno.ENOSPC, "No space left on device")

    view = GuardedProgress(Full())
    with pytest.raises(OSError, match="No space"):
        view.event("start")
    assert view.closed is None
