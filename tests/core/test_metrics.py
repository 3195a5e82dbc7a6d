"""The metrics readers: a trainer's /metrics page and Prometheus's query API, over real HTTP."""

import json
import socket
import struct
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import parse_qs, urlparse

import pytest
from prometheus_client import (
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from raw_http import RawServer, trickle

from critbatch.metrics import (
    METRICS_PAGE_LIMIT,
    PROMETHEUS_RESPONSE_LIMIT,
    MetricsUnavailable,
    PrometheusClient,
    TrialMetrics,
    parse_page,
    parse_vector,
    scrape,
)

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
    assert got == {(64, 1): TrialMetrics(step=300, value=42.5, reached=True, finished=True,
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


def test_a_name_lookup_that_hangs_is_cut_at_the_deadline(monkeypatch, serve):
    """getaddrinfo has no timeout of its own: a stuck resolver must not hold a reconcile."""
    port = urlparse(serve(respond(PAGE))).port
    lookups = []

    def stuck(*args, **kwargs):
        lookups.append(args[0])
        time.sleep(3)
        raise socket.gaierror("never answers in time")

    monkeypatch.setattr(socket, "getaddrinfo", stuck)
    started = time.monotonic()
    with pytest.raises(MetricsUnavailable):
        scrape(f"http://localhost:{port}/metrics", timeout=0.5)
    assert time.monotonic() - started < 1.5 and lookups == ["localhost"]
    page = scrape(f"http://127.0.0.1:{port}/metrics", timeout=2)  # an address: no lookup
    assert page[(8, 0)] == TrialMetrics(step=120, value=80.5) and len(lookups) == 1


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
    assert got[(16, 0)].step == 200 and got[(16, 0)].value == 30
    assert got[(16, 0)].steps_to_threshold == 200 and got[(16, 0)].reached is True
    assert 'sweep="s"' in _FakeQueryApi.queries[0]
    assert 'namespace="ml"' in _FakeQueryApi.queries[0]


def test_label_values_that_cannot_be_quoted_are_refused():
    with pytest.raises(ValueError, match="sweep"):
        PrometheusClient("http://127.0.0.1:9").trial_metrics('a"}or{x="')


# ---------------------------------------------------------------------------------------------
# Hostile endpoints: the trainer image is the user's own, so is what its pod answers
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def serve():
    servers = []

    def start(handler):
        servers.append(RawServer(handler))
        return servers[-1].url

    yield start
    for s in servers:
        s.close()


def respond(body, status="200 OK", length=True, content_type="text/plain"):
    def handler(conn, stop):
        head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nConnection: close\r\n"
        if length:
            head += f"Content-Length: {len(body)}\r\n"
        conn.sendall(head.encode() + b"\r\n")
        conn.sendall(body)
    return handler


def reset(conn, stop):
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def silent(conn, stop):
    stop.wait(5)


PAGE = (b'# TYPE critbatch_trainer_step gauge\n'
        b'critbatch_trainer_step{sweep="s",batch_size="8",seed="0"} 120.0\n'
        b'critbatch_trainer_fid{sweep="s",batch_size="8",seed="0"} 80.5\n')


def test_a_plain_page_from_a_raw_server_is_read(serve):
    assert scrape(serve(respond(PAGE)), timeout=2)[(8, 0)] == TrialMetrics(step=120, value=80.5)


@pytest.mark.parametrize("length", [True, False], ids=["declared", "undeclared"])
def test_a_page_over_the_cap_is_refused_without_reading_it_all(serve, length):
    body = PAGE + b"# " + b"x" * (4 * METRICS_PAGE_LIMIT) + b"\n"
    url = serve(respond(body, length=length))
    t0 = time.monotonic()
    tracemalloc.start()
    try:
        with pytest.raises(MetricsUnavailable):
            scrape(url, timeout=3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - t0 < 3
    assert peak < 3 * METRICS_PAGE_LIMIT  # the cap, not the page, bounds what is held


@pytest.mark.parametrize("headers_too", [False, True], ids=["body", "headers"])
def test_a_trickling_response_is_cut_at_the_deadline(serve, headers_too):
    url = serve(trickle(PAGE, every=0.02, headers_too=headers_too))
    t0 = time.monotonic()
    with pytest.raises(MetricsUnavailable):
        scrape(url, timeout=0.5)
    assert 0.4 < time.monotonic() - t0 < 1.5


def test_a_page_cut_short_of_its_content_length_is_refused(serve):
    def short(conn, stop):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(PAGE) + 1))
        conn.sendall(PAGE[:-3])  # "80.5" would read as "80"

    with pytest.raises(MetricsUnavailable):
        scrape(serve(short), timeout=2)


def test_a_silent_server_and_a_shared_deadline_cut_the_read(serve):
    url = serve(silent)
    t0 = time.monotonic()
    with pytest.raises(MetricsUnavailable):
        scrape(url, timeout=5, deadline=time.monotonic() + 0.3)
    assert time.monotonic() - t0 < 1.2
    with pytest.raises(MetricsUnavailable):  # a deadline already past: no request at all
        scrape(url, timeout=5, deadline=time.monotonic() - 1)


def test_errors_do_not_tell_refused_from_reset_nor_echo_bodies(serve):
    closed = socket.create_server(("127.0.0.1", 0))
    refused = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    cases = {"refused": refused, "reset": serve(reset),
             "500": serve(respond(b"SECRET internal detail", status="500 Oops")),
             "redirect": serve(respond(b"", status="302 Found")),
             "not http": "file:///etc/passwd", "bad port": "http://127.0.0.1:99999"}
    for what, url in cases.items():
        with pytest.raises(MetricsUnavailable) as exc:
            scrape(url + "/metrics", timeout=1)
        assert str(exc.value) == f"{url}/metrics unreachable or invalid", what
        with pytest.raises(MetricsUnavailable) as exc:
            PrometheusClient(url, timeout=1).trial_metrics("s")
        assert str(exc.value) == f"Prometheus at {url} unreachable or invalid", what


@pytest.mark.parametrize("body", [
    b'critbatch_trainer_step{batch_size="8",seed="0" 12\n',
    b"critbatch_trainer_step{batch_size=8} 1\n",
    b'critbatch_trainer_step{batch_size="8",seed="0"} twelve\n',
    b'critbatch_trainer_step{batch_size="8",seed="0"} 1 2 3\n',
    b'critbatch_trainer_step{batch_size="8",seed="0"} 1 later\n',
    b'critbatch_trainer_step{batch_size="8",seed="' + b"0" * 5000 + b'"} 1\n',
    b'critbatch_trainer_step{batch_size="8",seed="0"} 1\n' * 5000,
], ids=["unclosed", "unquoted", "word", "tokens", "timestamp", "long line", "too many"])
def test_malformed_sample_lines_make_the_page_invalid(serve, body):
    with pytest.raises(ValueError):
        parse_page(body)
    with pytest.raises(MetricsUnavailable):
        scrape(serve(respond(body)), timeout=2)


@pytest.mark.parametrize("body", [b"", b"\x00\xff" * 1000, b"hello\nworld {} 1\n",
                                  b"critbatch_trainer_stepping 1\n" + b" " * 100_000,
                                  b'{"json": true}', b"<html>nope</html>"])
def test_pages_without_the_series_are_empty_not_errors(body):
    assert parse_page(body) == {}


@pytest.mark.parametrize(("line", "expected"), [
    (b"step +Inf", TrialMetrics(invalid="step +Inf")),
    (b"step -Inf", TrialMetrics(invalid="step -Inf")),
    (b"step NaN", TrialMetrics(invalid="step NaN")),
    (b"step -5", TrialMetrics(invalid="step -5")),
    (b"steps_to_threshold +Inf", TrialMetrics(invalid="steps_to_threshold +Inf")),
    (b"max_steps -1", TrialMetrics(invalid="max_steps -1")),
    (b"reached +Inf", TrialMetrics(invalid="reached +Inf")),
    (b"reached NaN", TrialMetrics(step=3)),
    (b"fid NaN", TrialMetrics(step=3)),
    (b"fid +Inf", TrialMetrics(step=3)),
    (b"step 1e400", TrialMetrics(invalid="step +Inf")),
])
def test_values_that_are_not_finite_steps_make_the_trial_invalid(line, expected):
    name, value = line.split()
    page = (b'critbatch_trainer_step{batch_size="8",seed="0"} 3\n'
            b'critbatch_trainer_%s{batch_size="8",seed="0"} %s\n'
            b'critbatch_trainer_step{batch_size="16",seed="0"} 7\n') % (name, value)
    got = parse_page(page)
    assert got[(8, 0)] == expected
    assert got[(16, 0)] == TrialMetrics(step=7)  # the pod's other trial is unaffected


def test_the_parser_reads_what_prometheus_client_writes():
    reg = _trainer_registry(64, 1, 300, reached=True)
    Histogram("critbatch_trainer_step_duration_seconds", "d", LABELS, registry=reg).labels(
        "s", "64", "1").observe(0.1)
    Gauge("critbatch_trainer_hardware_info", "hw", (*LABELS, "cpu"), registry=reg).labels(
        "s", "64", "1", 'a "quoted" \\ cpu\nx').set(1)
    page = generate_latest(reg) + b'critbatch_trainer_step{batch_size="2",odd="a\\"}b\\\\",} 5 17\n'
    got = parse_page(page)
    assert got[(64, 1)] == TrialMetrics(step=300, value=42.5, reached=True, finished=True,
                                        steps_to_threshold=300, max_steps=1000)
    assert got[(2, 0)] == TrialMetrics(step=5)
    assert parse_page(page, trials={(2, 0)}) == {(2, 0): TrialMetrics(step=5)}


def _prometheus_answer(result, **extra):
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result},
                       **extra}).encode()


@pytest.mark.parametrize("body", [
    b"not json",
    b"[]",
    b'{"status": "error", "errorType": "bad_data", "error": "SECRET"}',
    b'{"status": "success"}',
    b'{"status": "success", "data": []}',
    b'{"status": "success", "data": {"resultType": "matrix", "result": []}}',
    b'{"status": "success", "data": {"resultType": "vector", "result": {}}}',
    _prometheus_answer([1, 2]),
    _prometheus_answer([{"metric": [], "value": [0, "1"]}]),
    _prometheus_answer([{"metric": {"batch_size": 8}, "value": [0, "1"]}]),
    _prometheus_answer([{"metric": {}, "value": [0, 1]}]),
    _prometheus_answer([{"metric": {}, "value": [0]}]),
    _prometheus_answer([{"metric": {}, "value": [0, "twelve"]}]),
    b"[" * 100_000,
    b"[" + b"{}," * 100_000 + b"{}]",
], ids=["text", "list", "error", "no data", "data list", "matrix", "result dict", "rows ints",
        "metric list", "label int", "value number", "value short", "value word", "deep",
        "braces"])
def test_prometheus_answers_of_the_wrong_shape_are_unavailable_not_errors(serve, body):
    with pytest.raises(ValueError):
        parse_vector(body)
    url = serve(respond(body, content_type="application/json"))
    with pytest.raises(MetricsUnavailable) as exc:
        PrometheusClient(url, timeout=2).trial_metrics("s")
    assert "SECRET" not in str(exc.value)


def test_a_prometheus_answer_over_the_cap_is_refused(serve):
    body = _prometheus_answer([], pad="x" * (PROMETHEUS_RESPONSE_LIMIT + 1))
    with pytest.raises(MetricsUnavailable):
        PrometheusClient(serve(respond(body, length=False)), timeout=3).trial_metrics("s")


def test_prometheus_series_with_an_infinite_step_make_only_their_trial_invalid(serve):
    body = _prometheus_answer([_series("step", "+Inf", 8, 0, "a:1"),
                               _series("fid", "NaN", 8, 0, "a:1"),
                               _series("step", "-3", 4, 0, "b:1"),
                               _series("step", "120", 16, 0, "c:1"),
                               _series("fid", "NaN", 16, 0, "c:1")])
    got = PrometheusClient(serve(respond(body)), timeout=2).trial_metrics("s")
    assert got == {(8, 0): TrialMetrics(invalid="step +Inf"),
                   (4, 0): TrialMetrics(invalid="step -3"),
                   (16, 0): TrialMetrics(step=120)}


def test_the_target_value_series_wins_over_the_fid_of_older_trainers():
    both = (b'critbatch_trainer_step{sweep="s",batch_size="8",seed="0"} 10\n'
            b'critbatch_trainer_fid{sweep="s",batch_size="8",seed="0"} 70\n'
            b'critbatch_trainer_target_value{sweep="s",batch_size="8",seed="0"} 0.93\n'
            b'critbatch_trainer_fid{sweep="s",batch_size="16",seed="0"} 55\n')
    got = parse_page(both)
    assert got[(8, 0)].value == 0.93
    assert got[(16, 0)].value == 55
