"""Where a local run reads metrics when no option says: spec.metrics decides."""

from __future__ import annotations

import pytest
from local_helpers import sweep_manifest

from critbatch.local.runner import metrics_mode
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
    manifest = sweep_manifest()
    if metrics is not None:
        manifest["spec"]["metrics"] = metrics
    assert metrics_mode(parse_sweep(manifest)) == expected
