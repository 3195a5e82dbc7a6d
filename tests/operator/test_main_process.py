"""`critbatch-operator` as a process: flags, liveness probe, metrics endpoint, a first Job."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
from fakes import JOBS, NS
from harness import create_sweep, wait_for
from loopback import free_port, http_get
from sweeps import sweep_manifest

pytestmark = pytest.mark.timeout(90)


async def test_the_operator_process_serves_health_and_metrics_and_creates_jobs(k):
    metrics, health = free_port(), free_port()
    env = {**os.environ, "CRITBATCH_RECONCILE_INTERVAL": "0.5",
           "CRITBATCH_TRAINER_IMAGE": "trainer:default"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "critbatch_operator", "--server", str(k.url).rstrip("/"),
        "--metrics-port", str(metrics), "--health-port", str(health), env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        body = sweep_manifest("proc", batchSizes=[4, 8], seeds=1, parallelism=1)
        del body["spec"]["trainer"]["image"]  # the operator's default image serves
        await wait_for(lambda: any(r.resource is not None and r.params.get("watch")
                                   for r in list(k)), timeout=30, what="the operator's watch")
        await create_sweep(k, body)

        def job():
            try:
                return k.objects[JOBS, NS, "proc-b4-s0"].raw
            except (KeyError, ValueError):
                return None

        created = await wait_for(job, timeout=30, what="the first Job")
        assert created["spec"]["template"]["spec"]["containers"][0]["image"] == "trainer:default"
        status, _ = await asyncio.to_thread(http_get, f"http://127.0.0.1:{health}/healthz")
        assert status == 200
        status, text = await asyncio.to_thread(http_get, f"http://127.0.0.1:{metrics}/metrics")
        assert status == 200 and "critbatch_operator_reconcile_duration_seconds" in text
        assert ('critbatch_operator_trials{campaign="",namespace="default",phase="Pending",'
                'sweep="proc"}') in text
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()
