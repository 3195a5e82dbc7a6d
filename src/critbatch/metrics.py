"""Reading trainer progress: a trainer's own /metrics page, or PromQL over Prometheus's HTTP API.

Both backends (Kubernetes Jobs, local processes) read trials through here, so a trial's step
and FID mean the same wherever they come from. Plain urllib: one GET per call, no session.
"""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

PREFIX = "critbatch_trainer_"
_FIELDS = {
    "step": "step",
    "fid": "fid",
    "reached": "reached",
    "finished": "finished",
    "steps_to_threshold": "steps_to_threshold",
    "max_steps": "max_steps",
}
_LABEL_VALUE = re.compile(r'^[^"\\\n]*$')


class MetricsUnavailable(Exception):
    """The metrics source could not be read (connection refused, timeout, bad response)."""


@dataclass(frozen=True)
class TrialMetrics:
    """What a trainer reports about its trial; None where the series is absent."""

    step: float | None = None
    fid: float | None = None
    reached: bool | None = None
    finished: bool | None = None
    steps_to_threshold: float | None = None
    max_steps: float | None = None


def _coerce(field: str, value: float) -> float | bool | None:
    if math.isnan(value):
        return None
    if field in ("reached", "finished"):
        return value >= 0.5
    return value


def _trial_key(labels: Mapping[str, str]) -> tuple[int, int] | None:
    try:
        return int(labels["batch_size"]), int(labels.get("seed", "0"))
    except (KeyError, ValueError):
        return None


def _collect(
    samples: Iterable[tuple[str, Mapping[str, str], float]],
) -> dict[tuple[int, int], TrialMetrics]:
    """Fold (metric name, labels, value) samples into one TrialMetrics per (batch size, seed).

    Where a trial shows up twice (a restarted pod still scraped, say), the series with the
    larger step wins: it is the later incarnation of the same deterministic trial.
    """
    per_source: dict[tuple[tuple[int, int], str], dict[str, float | bool | None]] = {}
    for name, labels, value in samples:
        field = _FIELDS.get(name.removeprefix(PREFIX)) if name.startswith(PREFIX) else None
        key = _trial_key(labels)
        if field is None or key is None:
            continue
        source = labels.get("instance", "") + "/" + labels.get("pod", "")
        per_source.setdefault((key, source), {})[field] = _coerce(field, value)
    out: dict[tuple[int, int], TrialMetrics] = {}
    for (key, _), fields in sorted(per_source.items(), key=lambda kv: kv[1].get("step") or 0):
        out[key] = TrialMetrics(**fields)
    return out


def _get(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise MetricsUnavailable(f"{url}: {exc}") from exc


def scrape(url: str, timeout: float = 5.0) -> dict[tuple[int, int], TrialMetrics]:
    """GET a trainer's /metrics page and read its critbatch_trainer_* series."""
    text = _get(url, timeout).decode("utf-8", errors="replace")
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise MetricsUnavailable(f"{url}: not a Prometheus text page: {exc}") from exc
    return _collect(
        (sample.name, sample.labels, sample.value) for fam in families for sample in fam.samples
    )


class PrometheusClient:
    """Instant PromQL queries over Prometheus's HTTP API (GET /api/v1/query)."""

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        url = f"{self.base_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            body = json.loads(_get(url, self.timeout))
        except json.JSONDecodeError as exc:
            raise MetricsUnavailable(f"{url}: response is not JSON") from exc
        if body.get("status") != "success":
            raise MetricsUnavailable(f"{url}: {body.get('errorType')}: {body.get('error')}")
        data = body.get("data", {})
        if data.get("resultType") != "vector":
            raise MetricsUnavailable(f"{url}: expected a vector, got {data.get('resultType')}")
        return [(dict(r["metric"]), float(r["value"][1])) for r in data.get("result", [])]

    def trial_metrics(
        self, sweep: str, matchers: Mapping[str, str] | None = None
    ) -> dict[tuple[int, int], TrialMetrics]:
        """Every trial of `sweep` (plus optional exact label matchers, e.g. namespace)."""
        labels = {"sweep": sweep, **(matchers or {})}
        for name, value in labels.items():
            if not _LABEL_VALUE.match(value):
                raise ValueError(f"{name}: label value {value!r} cannot be quoted in PromQL")
        names = "|".join(re.escape(PREFIX + f) for f in _FIELDS)
        selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
        rows = self.query(f'{{__name__=~"{names}",{selector}}}')
        return _collect((labels_.get("__name__", ""), labels_, value) for labels_, value in rows)
