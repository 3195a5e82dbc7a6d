"""What one reconcile costs for a sweep of 16 trials: API calls (asserted) and wall time
(printed only: a loaded machine makes any time limit flaky; speed belongs to benchmarks).

The reconcile function is driven directly (no kopf) against kmock, with the fake cluster
running the trials, so every request in kmock's log belongs to a known reconcile.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from fakes import FakeCluster
from harness import api_calls, create_sweep, status
from sweeps import sweep_manifest

from critbatch_operator.config import Config
from critbatch_operator.kube import Kube, make_api_client
from critbatch_operator.reconcile import SweepState, reconcile

SIXTEEN = [2, 4, 8, 16, 32, 64, 128, 256]


async def test_a_reconcile_of_sixteen_trials_makes_few_calls(k):
    body = await create_sweep(k, sweep_manifest("sixteen", batchSizes=SIXTEEN, seeds=2,
                                                parallelism=4, pruning={"sfoBound": False}))
    kube = Kube(make_api_client(str(k.url).rstrip("/")))
    cfg = Config(reconcile_interval=0.1, metrics_timeout=1.0)
    state = SweepState()
    events: list[tuple[str, str, str]] = []
    per_reconcile: list[Counter] = []
    seconds: list[float] = []
    async with FakeCluster(k):
        for _ in range(200):
            before = len(api_calls(k))
            t0 = time.perf_counter()
            current = {**body, "status": status(k, "sixteen")}
            outcome = await reconcile(current, kube=kube, cfg=cfg, state=state,
                                      emit=lambda *e: events.append(e))
            seconds.append(time.perf_counter() - t0)
            per_reconcile.append(Counter((v, p) for v, _, p in api_calls(k)[before:]))
            if outcome.status["phase"] == "Succeeded":
                break
            await asyncio.sleep(0.05)
    assert outcome.status["phase"] == "Succeeded"
    assert outcome.status["criticalBatchSize"]["measured"] == 4
    reads = [c[("list", "jobs")] + c[("list", "pods")] for c in per_reconcile]
    assert set(reads) == {2}  # one list of Jobs and one of pods, whatever the sweep size
    writes = [sum(c.values()) - r for c, r in zip(per_reconcile, reads, strict=True)]
    creates = sum(c[("create", "jobs")] for c in per_reconcile)
    assert creates == 16  # every Job once
    assert max(writes) <= 1 + 4  # a status patch plus at most `parallelism` creates
    # The status is written only when it changed: once the last results are in (a termination
    # message may add a trial's parameter count), a finished sweep costs two reads.
    for _ in range(2):
        before = len(api_calls(k))
        current = {**body, "status": status(k, "sixteen")}
        await reconcile(current, kube=kube, cfg=cfg, state=SweepState(), emit=lambda *e: None)
    assert len(api_calls(k)) - before == 2, api_calls(k)[before:]
    mean = sum(seconds) / len(seconds)
    print(f"reconciles={len(seconds)} mean={mean * 1000:.1f}ms max={max(seconds) * 1000:.1f}ms "
          f"calls/reconcile={sum(sum(c.values()) for c in per_reconcile) / len(seconds):.2f} "
          f"(reads 2, writes mean {sum(writes) / len(writes):.2f})")
