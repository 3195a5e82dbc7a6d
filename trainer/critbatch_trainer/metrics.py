"""The trainer's Prometheus metrics (docs/contracts.md), in a registry of their own per run.

In a trial group (`--trials`, critbatch_trainer.group) each child writes its values to the
group's PROMETHEUS_MULTIPROC_DIR and the parent serves them all; gauges therefore use the
`mostrecent` mode, which keeps a finished child's values and adds no `pid` label. In a single
trial the mode changes nothing.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Mapping
from functools import partial
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client import Gauge as _Gauge
from prometheus_client.exposition import ThreadingWSGIServer

LABELS = ("sweep", "batch_size", "seed")
HARDWARE_LABELS = ("device", "cpu", "isa", "gpu", "torch", "threads", "reproducible")
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                30.0)
Gauge = partial(_Gauge, multiprocess_mode="mostrecent")


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """A scrape is not news for the trial's log."""


def serve_registry(registry: CollectorRegistry, port: int, host: str) -> WSGIServer:
    """Serve `registry` on host:port from a daemon thread that `shutdown()` ends within 50 ms.

    prometheus_client's start_http_server polls for shutdown every 0.5 s: half a second at the
    end of every trial, between its result and the next trial's start.
    """
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    server_class = type("MetricsServer", (ThreadingWSGIServer,),
                        {"address_family": family[0][0]})
    server = make_server(host, port, make_wsgi_app(registry), server_class,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    return server


class TrainerMetrics:
    """Every series carries the trial's sweep, batch size and seed."""

    def __init__(self, sweep: str, batch_size: int, seed: int) -> None:
        self.registry = CollectorRegistry()
        self.labels = {"sweep": sweep, "batch_size": str(batch_size), "seed": str(seed)}
        r, lab = self.registry, LABELS
        p = "critbatch_trainer_"
        self._step = Gauge(p + "step", "Training steps done", lab, registry=r)
        self._samples = Counter(p + "samples", "Samples whose gradient was computed (steps x b)",
                                lab, registry=r)
        self._fid = Gauge(p + "fid", "FID at the last evaluation", lab, registry=r)
        self._value = Gauge(p + "target_value", "The target metric (FID) at the last "
                            "evaluation (the trial protocol's name)", lab, registry=r)
        self._n = Gauge(p + "steps_to_threshold", "N(b): the first evaluated step with FID <= "
                        "threshold", lab, registry=r)
        self._interp = Gauge(p + "interpolated_steps_to_threshold", "FID crossing step, "
                             "interpolated between the last two evaluations", lab, registry=r)
        self._reached = Gauge(p + "reached", "1 once FID <= threshold", lab, registry=r)
        self._finished = Gauge(p + "finished", "1 once the run ended (reached or censored)", lab,
                               registry=r)
        self._max_steps = Gauge(p + "max_steps", "Step budget", lab, registry=r)
        self._threshold = Gauge(p + "fid_threshold", "FID threshold", lab, registry=r)
        self._loss = Gauge(p + "loss", "Last training loss", (*lab, "network"), registry=r)
        self._grad = Gauge(p + "grad_norm", "Last gradient L2 norm", (*lab, "network"),
                           registry=r)
        self._gns = Gauge(p + "gradient_noise_scale", "B_simple of the generator (EMA)", lab,
                          registry=r)
        self._duration = Histogram(p + "step_duration_seconds", "Wall time per training step",
                                   lab, buckets=STEP_BUCKETS, registry=r)
        self._params = Gauge(p + "generator_parameters", "Theta: trainable generator "
                             "parameters", lab, registry=r)
        self._size = Gauge(p + "dataset_size", "|S|: training examples", lab, registry=r)
        self._hardware = Gauge(p + "hardware_info", "Where the trial runs (the result's "
                               "hardware); always 1", (*lab, *HARDWARE_LABELS), registry=r)
        for g in (self._reached, self._finished):
            g.labels(**self.labels).set(0)
        self._server: Any = None

    def serve(self, port: int, host: str) -> None:
        self._server = serve_registry(self.registry, port, host)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def static(self, params: int, dataset_size: int, max_steps: int, threshold: float) -> None:
        self._params.labels(**self.labels).set(params)
        self._size.labels(**self.labels).set(dataset_size)
        self._max_steps.labels(**self.labels).set(max_steps)
        self._threshold.labels(**self.labels).set(threshold)

    def hardware(self, info: Mapping[str, Any]) -> None:
        values = {k: _label(info.get(k)) for k in HARDWARE_LABELS}
        self._hardware.labels(**self.labels, **values).set(1)

    def step(self, step: int, samples: int, seconds: float | None = None) -> None:
        self._step.labels(**self.labels).set(step)
        self._samples.labels(**self.labels).inc(samples)
        if seconds is not None:
            self._duration.labels(**self.labels).observe(seconds)

    def network(self, network: str, loss: float, grad_norm: float) -> None:
        self._loss.labels(**self.labels, network=network).set(loss)
        self._grad.labels(**self.labels, network=network).set(grad_norm)

    def noise_scale(self, value: float | None) -> None:
        if value is not None:
            self._gns.labels(**self.labels).set(value)

    def evaluation(self, fid: float) -> None:
        self._fid.labels(**self.labels).set(fid)
        self._value.labels(**self.labels).set(fid)

    def reached(self, steps: int, interpolated: float | None) -> None:
        self._reached.labels(**self.labels).set(1)
        self._n.labels(**self.labels).set(steps)
        if interpolated is not None:
            self._interp.labels(**self.labels).set(interpolated)

    def finished(self) -> None:
        self._finished.labels(**self.labels).set(1)


def _label(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "" if value is None else str(value)


class NullMetrics:
    """TrainerMetrics' interface, recording nothing: a trial run without an endpoint."""

    def static(self, params: int, dataset_size: int, max_steps: int, threshold: float) -> None:
        pass

    def hardware(self, info: Mapping[str, Any]) -> None:
        pass

    def step(self, step: int, samples: int, seconds: float | None = None) -> None:
        pass

    def network(self, network: str, loss: float, grad_norm: float) -> None:
        pass

    def noise_scale(self, value: float | None) -> None:
        pass

    def evaluation(self, fid: float) -> None:
        pass

    def reached(self, steps: int, interpolated: float | None) -> None:
        pass

    def finished(self) -> None:
        pass

    def close(self) -> None:
        pass
