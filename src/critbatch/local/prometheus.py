"""Start and stop the installed `prometheus` on loopback, scraping trials found through a file.

The runner writes the trials' endpoints into a file_sd_configs JSON file as they start and
stop; Prometheus picks the changes up while it runs (its discovery syncs every ~5 s), so no
reload is needed. The server listens on 127.0.0.1 on a free port, never the default 9090.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from critbatch.errors import InputError
from critbatch.files import atomic_write


class PrometheusError(RuntimeError):
    """The Prometheus server could not be started or stopped."""


class PrometheusNotInstalled(InputError):
    """`--with-prometheus` was asked for, but no `prometheus` binary is on PATH."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago; the caller retries if someone takes it first."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def find_binary(name: str = "prometheus") -> str:
    """The prometheus executable, or a one-line error that says how to get it."""
    path = shutil.which(name)
    if path is None:
        raise PrometheusNotInstalled(
            f"--with-prometheus: no `{name}` executable on PATH "
            "(install the distribution's prometheus package, or use --prometheus URL)"
        )
    return path


@dataclass(frozen=True)
class Target:
    """One scrape target: host:port and the extra labels Prometheus puts on its series."""

    address: str
    labels: Mapping[str, str]


def write_targets(path: Path, targets: Iterable[Target]) -> None:
    """Write a file_sd_configs JSON file atomically, so Prometheus never reads half a file."""
    doc = [{"targets": [t.address], "labels": dict(t.labels)} for t in targets]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def render_config(sd_glob: str, scrape_interval: float = 1.0) -> dict:
    """The server's config: one job whose targets come from the runner's file_sd files."""
    interval = f"{max(1, round(scrape_interval * 1000))}ms"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": "critbatch-trainer",
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "file_sd_configs": [{"files": [sd_glob], "refresh_interval": "1s"}],
            }
        ],
    }


class PrometheusServer:
    """A private Prometheus: config, data and log in `workdir`, listening on 127.0.0.1.

    Use as a context manager, or call start() and stop(). `targets_file` is where the runner
    writes its file_sd targets.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        binary: str | None = None,
        scrape_interval: float = 1.0,
        host: str = "127.0.0.1",
    ) -> None:
        self.workdir = Path(workdir)
        self.binary = binary
        self.scrape_interval = scrape_interval
        self.host = host
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.targets_file = self.workdir / "targets" / "trials.json"
        self.config_file = self.workdir / "prometheus.yml"
        self.log_file = self.workdir / "prometheus.log"

    @property
    def url(self) -> str:
        if self.port is None:
            raise PrometheusError("prometheus: not started")
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> str:
        """Write the config, start the server, wait until /-/ready answers; return its URL."""
        binary = self.binary or find_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.targets_file.exists():
            write_targets(self.targets_file, [])
        sd_glob = str(self.targets_file.parent.resolve() / "*.json")
        self.config_file.write_text(
            yaml.safe_dump(render_config(sd_glob, self.scrape_interval), sort_keys=False)
        )
        last_error = ""
        for _attempt in range(3):  # the free port can be taken between probe and bind
            self.port = free_port(self.host)
            with open(self.log_file, "ab") as log:
                self.process = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={self.config_file.resolve()}",
                        f"--storage.tsdb.path={(self.workdir / 'data').resolve()}",
                        f"--web.listen-address={self.host}:{self.port}",
                        "--log.level=warn",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                self._wait_ready(timeout)
                return self.url
            except PrometheusError as exc:
                last_error = str(exc)
                self.stop()
        raise PrometheusError(last_error)

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PrometheusError(
                    f"prometheus: exited with code {self.process.returncode}: {self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise PrometheusError(f"prometheus: not ready after {timeout:.0f} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(empty log)"

    def set_targets(self, targets: Iterable[Target]) -> None:
        write_targets(self.targets_file, targets)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
