"""The operator image, built and run: scripts/images/build.sh builds it with buildah on a Debian
base made here, and scripts/images/sandbox.py runs it as the chart's Deployment says (UID 65532,
read-only root, a tmpfs on /tmp) against the kmock API server of the operator tests.

Needs root, buildah and debootstrap (scripts/install-test-tools.sh installs them where apt-get
exists): without root the module skips; without the tools it skips, or fails under CI. It
costs a few minutes, most of them debootstrap and buildah's copies (docs/images.md).
CRITBATCH_IMAGE_STORE keeps the images between runs (the base is reused); by default a
temporary store is made and removed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fakes import JOBS, NS
from harness import (
    create_sweep,
    k,  # noqa: F401  (a fixture: kmock as the operator tests serve it)
    kmock_options,  # noqa: F401  (a fixture)
    sweep_manifest,
    wait_for,
)
from loopback import free_port, http_get

from .conftest import ROOT, documents, find_tool, one, render

pytestmark = pytest.mark.timeout(1800)

BUILD = ROOT / "scripts" / "images" / "build.sh"
SANDBOX = ROOT / "scripts" / "images" / "sandbox.py"
RUN_AS = 65532


@dataclass(frozen=True)
class Built:
    store: Path
    image: str


@pytest.fixture(scope="module")
def operator_image() -> Iterator[Built]:
    """The `operator` target, built once for the module."""
    if os.geteuid() != 0:
        pytest.skip("building and running images needs root (buildah with vfs, chroot)")
    find_tool("buildah")
    find_tool("debootstrap")
    kept = os.environ.get("CRITBATCH_IMAGE_STORE")
    store = Path(kept) if kept else Path(tempfile.mkdtemp(prefix="critbatch-images-"))
    try:
        start = time.monotonic()
        proc = subprocess.run(["bash", str(BUILD), "operator"], capture_output=True, text=True,
                              env={**os.environ, "CRITBATCH_IMAGE_STORE": str(store)},
                              timeout=1500, check=False)
        assert proc.returncode == 0, f"build.sh failed:\n{proc.stdout}\n{proc.stderr[-5000:]}"
        print("\n".join(x for x in proc.stderr.splitlines() if x.startswith("images: ")))
        print(f"images: build.sh took {time.monotonic() - start:.0f} s")
        yield Built(store, proc.stdout.strip().splitlines()[-1])
    finally:
        if not kept:
            shutil.rmtree(store, ignore_errors=True)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, helm: str) -> Path:
    """The chart's operator Deployment (default values) as a JSON file for sandbox.py."""
    path = tmp_path_factory.mktemp("chart") / "deployment.json"
    path.write_text(json.dumps(one(documents(render(helm)), "Deployment")))
    return path


def sandbox(built: Built, pod: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SANDBOX), "--store", str(built.store), "--image", built.image,
            "--pod", str(pod), "--field", "metadata.namespace=critbatch-system",
            "--", *extra]


def test_the_chart_runs_the_operator_read_only_as_65532(deployment: Path) -> None:
    """What the sandbox reproduces is what the chart asks for."""
    pod = json.loads(deployment.read_text())["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["runAsUser"] == RUN_AS
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert all("emptyDir" in volumes[m["name"]] for m in container["volumeMounts"])


def test_the_image_is_configured_as_the_dockerfile_says(operator_image: Built) -> None:
    """User, entrypoint, HEALTHCHECK (kept by the docker format) and the base it names."""
    proc = subprocess.run(
        ["buildah", "--root", str(operator_image.store / "storage"), "--runroot",
         str(operator_image.store / "run"), "--storage-driver", "vfs", "inspect", "--type",
         "image", operator_image.image], capture_output=True, text=True, timeout=60, check=True)
    config = json.loads(proc.stdout)["Docker"]["config"]
    assert config["User"] == f"{RUN_AS}:{RUN_AS}"
    assert config["Entrypoint"] == ["critbatch-operator"]
    assert config["WorkingDir"] == "/tmp"
    assert config["Healthcheck"]["Test"][0] == "CMD"
    labels = config["Labels"]
    assert labels["org.opencontainers.image.base.name"].startswith("localhost/critbatch-base:")
    assert labels["org.opencontainers.image.version"] == operator_image.image.rsplit(":", 1)[1]


def test_operator_help_runs_in_the_image(operator_image: Built, deployment: Path) -> None:
    proc = subprocess.run(sandbox(operator_image, deployment, "--help"), capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("usage: critbatch-operator")


async def test_the_operator_image_creates_a_sweeps_jobs(operator_image: Built,
                                                        deployment: Path, k: Any,  # noqa: F811
                                                        tmp_path: Path) -> None:
    """The image's operator, as the chart runs it, watches kmock and creates a sweep's Jobs;
    its health and metrics endpoints answer; SIGTERM stops it cleanly."""
    metrics, health = free_port(), free_port()
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *sandbox(operator_image, deployment, "--server", str(k.url).rstrip("/"),
                     "--metrics-port", str(metrics), "--health-port", str(health)),
            stdout=out, stderr=subprocess.STDOUT)
    try:
        await wait_for(lambda: any(r.resource is not None and r.params.get("watch")
                                   for r in list(k)), timeout=240, what="the operator's watch")
        body = sweep_manifest("image", batchSizes=[4, 8], seeds=1, parallelism=2)
        del body["spec"]["trainer"]["image"]  # the chart's trainer image serves
        await create_sweep(k, body)

        def jobs() -> list[dict] | None:
            found = []
            for name in ("image-b4-s0", "image-b8-s0"):
                try:
                    found.append(k.objects[JOBS, NS, name].raw)
                except (KeyError, ValueError):
                    return None
            return found

        created = await wait_for(jobs, timeout=60, what="the sweep's two Jobs")
        for job in created:
            pod = job["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsUser"] == RUN_AS
            assert pod["containers"][0]["image"].startswith("critbatch-trainer:")
        status, _ = await asyncio.to_thread(http_get, f"http://127.0.0.1:{health}/healthz")
        assert status == 200
        status, text = await asyncio.to_thread(http_get, f"http://127.0.0.1:{metrics}/metrics")
        assert status == 200 and "critbatch_operator_reconcile_duration_seconds" in text
    except BaseException:
        print(log.read_text(errors="replace")[-5000:])
        raise
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, log.read_text(errors="replace")[-5000:]


def load_sandbox() -> Any:
    spec = importlib.util.spec_from_file_location("sandbox", SANDBOX)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sandbox_follows_kubernetes_command_and_env_rules() -> None:
    """command replaces the entrypoint and drops CMD; args replace CMD; env adds to the
    image's; user and groups come from the security contexts before the image's USER."""
    sb = load_sandbox()
    config = {"Entrypoint": ["ep"], "Cmd": ["cmd"], "User": "65532:65532"}
    assert sb.argv(config, {}, ["x"]) == ["ep", "cmd", "x"]
    assert sb.argv(config, {"args": ["a"]}, []) == ["ep", "a"]
    assert sb.argv(config, {"command": ["c"]}, []) == ["c"]
    assert sb.argv(config, {"command": ["c"], "args": ["a"]}, []) == ["c", "a"]
    env = sb.container_env(["PATH=/bin", "HOME=/tmp"], {"env": [
        {"name": "HOME", "value": "/scratch"},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
        {"metadata.name": "p"})
    assert env == ["PATH=/bin", "HOME=/scratch", "POD=p"]
    assert sb.identity(config, {}, {}) == (65532, 65532, [65532])
    pod = {"securityContext": {"runAsUser": 1000, "fsGroup": 2000, "runAsNonRoot": True}}
    assert sb.identity(config, pod, {}) == (1000, 65532, [2000, 65532])
    with pytest.raises(SystemExit, match="runAsNonRoot"):
        sb.identity(config, pod, {"securityContext": {"runAsUser": 0}})
    assert sb.tmpfs_size("64Mi") == ",size=67108864" and sb.tmpfs_size("1G") == ",size=1000000000"
    assert sb.tmpfs_size(None) == ""
