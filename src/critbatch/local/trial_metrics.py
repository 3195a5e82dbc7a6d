"""How a local run reads its trials' metrics: scraping each trainer, or through Prometheus.

With Prometheus (the user's server, or a private one the run starts) the run publishes its
trials' endpoints in a file_sd targets file, labelled with the run's id so that a server's
older series of the same sweep are never taken for this run's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from critbatch.errors import OutputError
from critbatch.local import prometheus as prom
from critbatch.local.options import MetricsMode, RunError, RunOptions
from critbatch.local.rundir import unwritable_reason
from critbatch.metrics import MetricsUnavailable, PrometheusClient, TrialMetrics, scrape
from critbatch.spec import Sweep
from critbatch.vocabulary import TrialKey

RUN_LABEL = "critbatch_run"  # a target label that tells this run's series from older ones


class MetricsChannel:
    """One run's way to its trials' metrics: the mode, the Prometheus server or client, the
    targets file, and the last problem reading them (None while they read fine)."""

    def __init__(self, sweep: Sweep, options: RunOptions, *, out: Path, run_id: str) -> None:
        self.sweep = sweep
        self.mode = MetricsMode(options.metrics)
        self.options = options
        self.out = out
        self.run_id = run_id
        self.server: prom.PrometheusServer | None = None
        self.client: PrometheusClient | None = None
        self.problem: str | None = None

    @property
    def source(self) -> str:
        """The status's `source` for values read through this channel."""
        return "direct" if self.mode is MetricsMode.DIRECT else "prometheus"

    def linger(self) -> float:
        """Seconds a finished trainer keeps serving metrics: long enough to be read once more."""
        if self.options.linger is not None:
            return self.options.linger
        if self.mode is MetricsMode.DIRECT:
            return 2.0
        if self.mode is MetricsMode.WITH_PROMETHEUS:
            return max(10.0, 5 * self.options.scrape_interval)
        return float(self.sweep.metrics.linger_seconds)

    def check_binary(self) -> None:
        """A private server needs the installed prometheus: fail before anything is written."""
        if self.mode is MetricsMode.WITH_PROMETHEUS:
            prom.find_binary()

    def check_sd_file(self) -> None:
        """--sd-file must be a file this run can write (Prometheus reads it)."""
        path = self.options.sd_file
        if path is None or self.mode is not MetricsMode.PROMETHEUS:
            return
        path = Path(path)
        if path.is_dir():
            raise RunError(f"--sd-file: {path} is a directory; name the file to write, e.g. "
                           f"{path / 'trials.json'}")
        try:
            prom.write_targets(path, [])
        except OSError as exc:
            raise RunError(f"--sd-file: cannot write {path}: {unwritable_reason(path, exc)}"
                           ) from None

    def start(self) -> dict[str, str] | None:
        """Start the private server or the client; returns what the run's `prometheus` event
        says (None when scraping directly)."""
        if self.mode is MetricsMode.WITH_PROMETHEUS:
            self.server = prom.PrometheusServer(self.out / "prometheus",
                                                scrape_interval=self.options.scrape_interval)
            url = self.server.start()
            self.client = PrometheusClient(url, timeout=3.0)
            return {"url": url}
        if self.mode is MetricsMode.PROMETHEUS:
            if not self.options.prometheus_url:
                raise RunError("--prometheus: needs the server's URL")
            self.client = PrometheusClient(self.options.prometheus_url, timeout=3.0)
            return {"url": self.options.prometheus_url, "targets": str(self.sd_file())}
        return None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def sd_file(self) -> Path | None:
        """Where the targets go: the private server's file, --sd-file, or OUT's default."""
        if self.server is not None:
            return self.server.targets_file
        if self.mode is MetricsMode.PROMETHEUS:
            return self.options.sd_file or self.out / "prometheus" / "targets" / "trials.json"
        return None

    def publish(self, ports: Mapping[str, int | None]) -> None:
        """Tell Prometheus (through its file_sd file) which trials, by name, serve metrics
        on which port now."""
        path = self.sd_file()
        if path is None:
            return
        targets = [prom.Target(f"127.0.0.1:{port}", {RUN_LABEL: self.run_id, "trial": name})
                   for name, port in ports.items() if port]
        try:
            prom.write_targets(path, targets)
        except OSError as exc:
            raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None

    def read(self, ports: Mapping[TrialKey, int | None]) -> dict[TrialKey, TrialMetrics]:
        """The running trials' metrics (keyed by trial, with the port each serves on) as far as
        they can be read now; a failed Prometheus query sets `problem`."""
        seen_by_key: dict[TrialKey, TrialMetrics] = {}
        if self.client is not None:
            try:
                seen = self.client.trial_metrics(self.sweep.name, {RUN_LABEL: self.run_id})
            except MetricsUnavailable as exc:
                self.problem = f"Prometheus query failed: {exc}"
                return {}
            self.problem = None
            for key in ports:
                m = seen.get((key.batch_size, key.seed))
                if m is not None:
                    seen_by_key[key] = m
            return seen_by_key
        for key, port in ports.items():
            if not port:
                continue
            try:
                seen = scrape(f"http://127.0.0.1:{port}/metrics", timeout=2.0)
            except MetricsUnavailable:
                continue  # still starting, or already gone
            m = seen.get((key.batch_size, key.seed))
            if m is not None:
                seen_by_key[key] = m
        return seen_by_key
