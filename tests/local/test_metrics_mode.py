"""Where a local run reads metrics when no option says: spec.metrics decides."""

from __future__ import annotations

import pytest
from local_helpers import local_manifest

from critbatch.local.options import MetricsMode, metrics_mode
from critbatch.spec import parse_sweep


@pytest.mark.parametrize(("metrics", "expected"), [
    (None, ("direct", None)),
    ({"source": "auto"}, ("direct", None)),
    ({"source": "direct"}, ("direct", None)),
    ({"source": "prometheus"}, ("with-prometheus", None)),
    ({"source": "prometheus", "prometheusURL": "http://127.0.0.1:9999"},
     ("prometheus", "http://127.0.0.1:9999")),
])
def test_spec_metrics_source_picks_the_local_metrics_path(metrics, expected):
    manifest = local_manifest()
    if metrics is not None:
        manifest["spec"]["metrics"] = metrics
    assert metrics_mode(parse_sweep(manifest)) == expected


def test_metrics_modes_keep_their_text():
    """The modes appear in events, output and the status as these words."""
    assert [str(m) for m in MetricsMode] == ["auto", "direct", "prometheus", "with-prometheus"]
    assert MetricsMode("with-prometheus") is MetricsMode.WITH_PROMETHEUS
