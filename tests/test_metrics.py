"""The metrics readers: a trainer's /metrics page and Prometheus's query API, over real HTTP."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import parse_qs, urlparse

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from critbatch.metrics import MetricsUnavailable, PrometheusClient, TrialMetrics, scrape

LABELS = ("sweep", "batch_size", "seed")


def _trainer_registry(batch_size: int, seed: int, step: float, reached: bool) -> CollectorRegistry:
    reg = CollectorRegistry()
    values = {"step": step, "fid": 42.5, "reached": float(reached), "finished": float(reached),
              "max_steps": 1000.0}
    for name, value in values.items():
        Gauge(f"critbatch_trainer_{name}", name, LABELS, registry=reg).labels(
            "s", str(batch_size), str(seed)).set(value)
    stt = Gauge("critbatch_trainer_steps_to_threshold", "N(b)", LABELS, registry=reg)
    if reached:
        stt.labels("s", str(batch_size), str(seed)).set(step)
    Gauge("critbatch_trainer_loss", "loss", (*LABELS, "network"), registry=reg).labels(
        "s", str(batch_size), str(seed), "generator").set(1.5)
    return reg


def _serve(reg: CollectorRegistry):
    server, thread = start_http_server(0, addr="127.0.0.1", registry=reg)
    return server, thread, f"http://127.0.0.1:{server.server_port}/metrics"


def test_scrape_reads_a_trainer_page():
    server, thread, url = _serve(_trainer_registry(64, 1, 300, reached=True))
    try:
        got = scrape(url)
    finally:
        server.shutdown()
        thread.join()
    assert got == {(64, 1): TrialMetrics(step=300, fid=42.5, reached=True, finished=True,
                                         steps_to_threshold=300, max_steps=1000)}


def test_scrape_of_a_running_trial_has_no_steps_to_threshold():
    server, thread, url = _serve(_trainer_registry(8, 0, 120, reached=False))
    try:
        got = scrape(url)[(8, 0)]
    finally:
        server.shutdown()
        thread.join()
    assert got.reached is False and got.steps_to_threshold is None and got.step == 120


def test_unreachable_endpoint_raises_metrics_unavailable():
    with pytest.raises(MetricsUnavailable):
        scrape("http://127.0.0.1:9/metrics", timeout=1)


class _FakeQueryApi(BaseHTTPRequestHandler):
    """Answers /api/v1/query with a fixed vector and records the PromQL it was asked."""

    queries: ClassVar[list[str]] = []
    result: ClassVar[list[dict]] = []

    def do_GET(self):
        q = parse_qs(urlparse(self.path).query)["query"][0]
        type(self).queries.append(q)
        body = json.dumps({"status": "success",
                           "data": {"resultType": "vector", "result": type(self).result}})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


def _series(name, value, batch_size, seed, instance):
    return {"metric": {"__name__": f"critbatch_trainer_{name}", "sweep": "s",
                       "batch_size": str(batch_size), "seed": str(seed), "instance": instance},
            "value": [0, str(value)]}


def test_prometheus_client_keeps_the_later_incarnation_of_a_restarted_trial():
    _FakeQueryApi.queries = []
    _FakeQueryApi.result = [
        _series("step", 50, 16, 0, "old:9100"), _series("fid", 90, 16, 0, "old:9100"),
        _series("step", 200, 16, 0, "new:9100"), _series("fid", 30, 16, 0, "new:9100"),
        _series("reached", 1, 16, 0, "new:9100"),
        _series("steps_to_threshold", 200, 16, 0, "new:9100"),
    ]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeQueryApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = PrometheusClient(f"http://127.0.0.1:{server.server_port}")
        got = client.trial_metrics("s", {"namespace": "ml"})
    finally:
        server.shutdown()
        thread.join()
    assert got[(16, 0)].step == 200 and got[(16, 0)].fid == 30
    assert got[(16, 0)].steps_to_threshold == 200 and got[(16, 0)].reached is True
    assert 'sweep="s"' in _FakeQueryApi.queries[0]
    assert 'namespace="ml"' in _FakeQueryApi.queries[0]


def test_label_values_that_cannot_be_quoted_are_refused():
    with pytest.raises(ValueError, match="sweep"):
        PrometheusClient("http://127.0.0.1:9").trial_metrics('a"}or{x="')
