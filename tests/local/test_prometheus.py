"""The private Prometheus server: loopback only, file-based discovery, clean stop."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request

import pytest
import yaml
from local_helpers import alive, wait_until
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from critbatch.local.prometheus import (
    PrometheusNotInstalled,
    PrometheusServer,
    Target,
    find_binary,
    free_port,
    render_config,
    write_targets,
)
from critbatch.metrics import PrometheusClient


def test_targets_file_is_prometheus_file_sd_json(tmp_path):
    path = tmp_path / "targets" / "trials.json"
    write_targets(path, [Target("127.0.0.1:1234", {"critbatch_run": "abc", "trial": "b16-s0"})])
    assert json.loads(path.read_text()) == [
        {"targets": ["127.0.0.1:1234"], "labels": {"critbatch_run": "abc", "trial": "b16-s0"}}]
    write_targets(path, [])
    assert json.loads(path.read_text()) == []
    assert [p.name for p in path.parent.iterdir()] == ["trials.json"]  # no temp file left


def test_missing_binary_is_a_one_line_input_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(PrometheusNotInstalled, match=r"^--with-prometheus: no `prometheus`"):
        find_binary()


def test_config_passes_promtool(tmp_path, prometheus_binary):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    (tmp_path / "t").mkdir()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(render_config(str(tmp_path / "t" / "*.json"), 0.5)))
    done = subprocess.run([promtool, "check", "config", str(cfg)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_server_discovers_a_target_from_the_file_and_answers_promql(tmp_path,
                                                                     prometheus_binary):
    reg = CollectorRegistry()
    Gauge("critbatch_trainer_step", "steps", ["sweep", "batch_size", "seed"],
          registry=reg).labels("demo", "8", "1").set(42)
    port = free_port()
    start_http_server(port, addr="127.0.0.1", registry=reg)
    server = PrometheusServer(tmp_path / "prom", binary=prometheus_binary)
    with server:
        assert server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.url + "/-/ready", timeout=5) as resp:
            assert resp.status == 200
        server.set_targets([Target(f"127.0.0.1:{port}", {"critbatch_run": "r1"})])
        client = PrometheusClient(server.url)
        seen = {}
        assert wait_until(lambda: seen.update(client.trial_metrics("demo", {"critbatch_run": "r1"}))
                          or seen, timeout=30, every=0.5)
        assert seen[(8, 1)].step == 42
        assert client.trial_metrics("demo", {"critbatch_run": "other"}) == {}
        pid = server.process.pid
    assert server.process is None
    assert wait_until(lambda: not alive(pid), timeout=5)
