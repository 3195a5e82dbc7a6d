"""Reading trainer progress: a trainer's own /metrics page, or PromQL over Prometheus's HTTP API.

Both backends (Kubernetes Jobs, local processes) read trials through here, so a trial's step
and FID mean the same wherever they come from. What is read is input from the user (the trainer
image is the user's own): every read (`critbatch.bounded_http`) has a size cap and one
deadline, every shape is checked, and a trial whose values make no sense comes back marked
`invalid` instead of raising.
Errors say which source failed and nothing about how (no response bodies, no socket errors):
the details go to the debug log.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import urllib.parse
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass

from critbatch import bounded_http
from critbatch.numbers import number_text

log = logging.getLogger(__name__)

PREFIX = "critbatch_trainer_"
# Series name (after PREFIX) -> TrialMetrics field. `fid` is the value of trainers older than
# `target_value` (and of dashboards); `target_value` wins where a trainer serves both.
_FIELDS = {
    "step": "step",
    "target_value": "value",
    "fid": "fid",
    "reached": "reached",
    "finished": "finished",
    "steps_to_threshold": "steps_to_threshold",
    "max_steps": "max_steps",
}
_NAMES = frozenset((PREFIX + f).encode() for f in _FIELDS)
_STEP_FIELDS = ("step", "steps_to_threshold", "max_steps")
_FLAG_FIELDS = ("reached", "finished")
_LABEL_VALUE = re.compile(r'^[^"\\\n]*$')

# A trainer's page is a few KiB per trial and a pod serves at most 8 trials (well under 100
# KiB with the process collectors); 4 MiB leaves 40x room and bounds what one pod can make the
# shared operator hold (its sample lines are parsed one at a time, the rest skipped).
METRICS_PAGE_LIMIT = 4 * 1024 * 1024
# An instant query answers the series sampled in the last 5 minutes: the running trials (at
# most spec.parallelism, 256) and those just ended, six series each of about 330 bytes with a
# PodMonitor's labels. Even every trial of the largest sweep the CRD allows (64 batch sizes x 32
# seeds) at once fits: 12,288 series, 3.9 MiB.
PROMETHEUS_RESPONSE_LIMIT = 4 * 1024 * 1024
# Every series in Prometheus's answer is an object in an object (`{"metric": {...}, ...}`) of at
# least ~100 bytes; far more braces than that is not an answer, and would cost ~30x its size in
# Python objects to parse.
_MIN_BYTES_PER_OBJECT = 32
# Parsing JSON costs up to ~12x its size in memory: at most two answers are parsed at once,
# whatever the number of sweeps reconciled concurrently.
_JSON_PARSES = threading.BoundedSemaphore(2)
_MAX_LINE = 4096  # a trainer's sample line is under 300 bytes
# Samples of the six series read on one page: a pod's 8 trials have 48. The cap bounds the
# parsing time a page can cost the operator (~0.1 s), whatever its size.
_MAX_PAGE_SAMPLES = 4096
_SAMPLE_LINE = re.compile(
    rb"^[ \t]*(" + b"|".join(re.escape(n) for n in sorted(_NAMES)) + rb")(?=[{ \t])([^\n]*)",
    re.MULTILINE)
_LABEL = re.compile(
    rb'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\\n]|\\.)*)"[ \t]*([,}])')
_LABELS_END = re.compile(rb"[ \t]*}")
_ESCAPE = re.compile(rb"\\(.)")


class MetricsUnavailable(Exception):
    """The metrics source could not be read: unreachable, too slow, too large, or not valid."""


@dataclass(frozen=True)
class TrialMetrics:
    """What a trainer reports about its trial; None where the series is absent.

    `invalid` says why the trial's values were refused (a step of +Inf, say): then every other
    field is None, so a reader that ignores `invalid` sees a trial with no metrics.
    """

    step: float | None = None
    value: float | None = None  # the target metric's last value (FID for the built-in trainer)
    reached: bool | None = None
    finished: bool | None = None
    steps_to_threshold: float | None = None
    max_steps: float | None = None
    invalid: str | None = None


def _check(field: str, value: float) -> tuple[float | bool | None, str | None]:
    """(the value to keep, why it is refused)."""
    if field in _STEP_FIELDS:
        if not math.isfinite(value) or value < 0:
            return None, f"{field} {number_text(value)}"
        return value, None
    if field in _FLAG_FIELDS:
        if math.isnan(value):
            return None, None
        if not math.isfinite(value):
            return None, f"{field} {number_text(value)}"
        return value >= 0.5, None
    # A diverged generator legitimately evaluates to a NaN or infinite FID: unknown, not wrong.
    return (value if math.isfinite(value) else None), None


def _trial_key(labels: Mapping[str, str]) -> tuple[int, int] | None:
    try:
        return int(labels["batch_size"]), int(labels.get("seed", "0"))
    except (KeyError, ValueError, TypeError):
        return None


def _collect(
    samples: Iterable[tuple[str, Mapping[str, str], float]],
    trials: Collection[tuple[int, int]] | None = None,
) -> dict[tuple[int, int], TrialMetrics]:
    """Fold (metric name, labels, value) samples into one TrialMetrics per (batch size, seed),
    keeping only `trials` when given.

    Where a trial shows up twice (a restarted pod still scraped, say), the series with the
    larger step wins: it is the later incarnation of the same deterministic trial. A trial with
    any refused value is `invalid` as a whole.
    """
    per_source: dict[tuple[tuple[int, int], str], dict[str, float | bool | None]] = {}
    invalid: dict[tuple[int, int], str] = {}
    for name, labels, value in samples:
        field = _FIELDS.get(name.removeprefix(PREFIX)) if name.startswith(PREFIX) else None
        key = _trial_key(labels)
        if field is None or key is None or (trials is not None and key not in trials):
            continue
        kept, problem = _check(field, float(value))
        if problem is not None:
            invalid.setdefault(key, problem)
            continue
        source = labels.get("instance", "") + "/" + labels.get("pod", "")
        per_source.setdefault((key, source), {})[field] = kept
    out: dict[tuple[int, int], TrialMetrics] = {}
    for (key, _), fields in sorted(per_source.items(), key=lambda kv: kv[1].get("step") or 0):
        fid = fields.pop("fid", None)
        fields.setdefault("value", fid)
        out[key] = TrialMetrics(**fields)
    for key, problem in invalid.items():
        out[key] = TrialMetrics(invalid=problem)
    return out


def fetch(url: str, *, timeout: float, limit: int, deadline: float | None = None,
          accept: str = "*/*") -> bytes:
    """`critbatch.bounded_http.get`, its failure as MetricsUnavailable."""
    try:
        return bounded_http.get(url, timeout=timeout, limit=limit, deadline=deadline,
                                accept=accept)
    except bounded_http.Unreachable as exc:
        raise MetricsUnavailable(str(exc)) from None


# ---------------------------------------------------------------------------------------------
# A trainer's /metrics page
# ---------------------------------------------------------------------------------------------


def _unescape(raw: bytes) -> str:
    if b"\\" not in raw:
        return raw.decode("utf-8", errors="replace")
    return _ESCAPE.sub(lambda m: b"\n" if m[1] == b"n" else m[1], raw).decode(
        "utf-8", errors="replace")


def _parse_line(name: bytes, rest: bytes) -> tuple[str, dict[str, str], float]:
    """One sample line of the text exposition format, after its metric name."""
    if len(rest) > _MAX_LINE:
        raise ValueError("a sample line is too long")
    labels: dict[str, str] = {}
    pos = 0
    if rest.startswith(b"{"):
        pos = 1
        while True:
            close = _LABELS_END.match(rest, pos)
            if close is not None:
                pos = close.end()
                break
            m = _LABEL.match(rest, pos)
            if m is None:
                raise ValueError("malformed labels")
            labels[m[1].decode()] = _unescape(m[2])
            pos = m.end()
            if m[3] == b"}":
                break
    tokens = rest[pos:].split()
    if len(tokens) not in (1, 2):
        raise ValueError("not `name{labels} value [timestamp]`")
    if len(tokens) == 2:
        int(tokens[1])
    return name.decode(), labels, float(tokens[0])


def _page_samples(body: bytes) -> Iterator[tuple[str, dict[str, str], float]]:
    for i, m in enumerate(_SAMPLE_LINE.finditer(body)):
        if i >= _MAX_PAGE_SAMPLES:
            raise ValueError(f"more than {_MAX_PAGE_SAMPLES} samples of the series read")
        yield _parse_line(m[1], m[2])


def parse_page(body: bytes, trials: Collection[tuple[int, int]] | None = None,
               ) -> dict[tuple[int, int], TrialMetrics]:
    """The critbatch_trainer_* series of a /metrics page (text format 0.0.4); ValueError when a
    line of theirs is malformed. Other lines are skipped unparsed: the page may be huge."""
    return _collect(_page_samples(body), trials)


def scrape(url: str, timeout: float = 5.0, *, deadline: float | None = None,
           trials: Collection[tuple[int, int]] | None = None,
           ) -> dict[tuple[int, int], TrialMetrics]:
    """GET a trainer's /metrics page and read its critbatch_trainer_* series (only `trials`'
    when given), within METRICS_PAGE_LIMIT bytes and `timeout` seconds (and `deadline`)."""
    body = fetch(url, timeout=timeout, limit=METRICS_PAGE_LIMIT, deadline=deadline,
                 accept="text/plain")
    try:
        return parse_page(body, trials)
    except ValueError as exc:
        log.debug("GET %s: %s", url, exc)
        raise MetricsUnavailable(f"{url} unreachable or invalid") from None


# ---------------------------------------------------------------------------------------------
# Prometheus's HTTP API
# ---------------------------------------------------------------------------------------------


def parse_vector(body: bytes) -> list[tuple[dict[str, str], float]]:
    """The series of an instant query's JSON answer; ValueError unless it is a vector of
    `{"metric": {str: str}, "value": [time, "number"]}` objects."""
    if body.count(b"{") > len(body) // _MIN_BYTES_PER_OBJECT + 4:
        raise ValueError("too many objects for its size")
    try:
        with _JSON_PARSES:
            doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON: {type(exc).__name__}") from None
    if not isinstance(doc, dict) or doc.get("status") != "success":
        raise ValueError("status is not success")
    data = doc.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        raise ValueError("not a vector")
    result = data.get("result")
    if not isinstance(result, list):
        raise ValueError("result is not a list")
    out = []
    for row in result:
        if not isinstance(row, dict):
            raise ValueError("a series is not an object")
        metric, value = row.get("metric"), row.get("value")
        if not isinstance(metric, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metric.items()):
            raise ValueError("a series' labels are not strings")
        if not isinstance(value, list) or len(value) != 2 or not isinstance(value[1], str):
            raise ValueError("a series' value is not [time, string]")
        out.append((metric, float(value[1])))  # float() takes "NaN", "+Inf": checked later
    return out


class PrometheusClient:
    """Instant PromQL queries over Prometheus's HTTP API (GET /api/v1/query)."""

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        url = f"{self.base_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            return parse_vector(fetch(url, timeout=self.timeout,
                                      limit=PROMETHEUS_RESPONSE_LIMIT,
                                      accept="application/json"))
        except (MetricsUnavailable, ValueError) as exc:
            log.debug("Prometheus query %s: %s", url, exc)
            raise MetricsUnavailable(f"Prometheus at {self.base_url} unreachable or invalid",
                                     ) from None

    def trial_metrics(
        self, sweep: str, matchers: Mapping[str, str] | None = None,
        trials: Collection[tuple[int, int]] | None = None,
    ) -> dict[tuple[int, int], TrialMetrics]:
        """Every trial of `sweep` (plus optional exact label matchers, e.g. namespace; only
        `trials` when given)."""
        labels = {"sweep": sweep, **(matchers or {})}
        for name, value in labels.items():
            if not _LABEL_VALUE.match(value):
                raise ValueError(f"{name}: label value {value!r} cannot be quoted in PromQL")
        names = "|".join(re.escape(PREFIX + f) for f in _FIELDS)
        selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
        rows = self.query(f'{{__name__=~"{names}",{selector}}}')
        return _collect(((labels_.get("__name__", ""), labels_, value) for labels_, value in rows),
                        trials)
