"""`critbatch run --resume --retry-failed`: failed trials start again, results never do.

A shell wrapper around the FAKE trainer crashes the trials of one batch size while a marker
file exists, so the same sweep first fails there and then, after the "fix", succeeds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fake_trainer import expected_steps
from local_helpers import FAKE_TRAINER, local_manifest, run_events

from critbatch.cli import main
from critbatch.local.options import RunError, RunOptions
from critbatch.local.runner import LocalRun

A, B = 1000.0, 8.0  # the fake's defaults

pytestmark = pytest.mark.usefixtures("fast_fake")


def crashing_trainer(marker: Path, batch_size: int) -> list[str]:
    """The fake trainer, except that batch size `batch_size` exits 1 while `marker` exists."""
    script = (f'case " $* " in *" --batch-size {batch_size} "*) '
              f'if [ -e {marker} ]; then echo "boom: out of memory" >&2; exit 1; fi;; esac; '
              f'exec {" ".join(FAKE_TRAINER)} "$@"')
    return ["sh", "-c", script, "trainer"]


def phases(status: dict) -> dict[int, str]:
    return {t["batchSize"]: t["phase"] for t in status["trials"]}


def run(manifest: dict, out: Path, command: list[str], **options) -> LocalRun:
    runner = LocalRun(manifest, RunOptions(out_dir=out, trainer_command=command,
                                           poll_interval=0.05, scrape_interval=0.2, **options))
    runner.run()
    return runner


def test_retry_failed_restarts_only_the_failed_trials(tmp_path):
    marker = tmp_path / "broken"
    marker.touch()
    trainer = crashing_trainer(marker, 16)
    out = tmp_path / "run"
    # b=8 never reaches (censored); b=16 crashes; b=32 reaches; b=64 is pruned by the SFO
    # bound (or, on a slow machine, reaches first): every final phase but Failed is a result.
    manifest = local_manifest(batchSizes=[8, 16, 32, 64], parallelism=1,
                              pruning={"sfoBound": True}, trainer={"backoffLimit": 0})
    first = run(manifest, out, trainer)
    before = phases(first.status)
    assert before[8] == "Censored" and before[16] == "Failed" and before[32] == "Reached"
    assert before[64] in ("Pruned", "Reached")
    assert "boom: out of memory" in trials(first.status)[16]["reason"]
    assert first.status["criticalBatchSize"]["measured"] == 32

    marker.unlink()  # the cause is fixed
    n = len(run_events(out))
    plain = run(manifest, out, trainer, resume=True)  # a plain resume keeps the failure
    assert phases(plain.status) == before
    assert not [e for e in run_events(out)[n:] if e["event"] in ("start", "restart")]

    n = len(run_events(out))
    again = run(manifest, out, trainer, resume=True, retry_failed=True)
    started = [e["batch_size"] for e in run_events(out)[n:] if e["event"] == "start"]
    assert [e["batch_size"] for e in run_events(out)[n:] if e["event"] == "retry"] == [16]
    assert started == [16]  # censored, reached and pruned trials are never rerun
    after = phases(again.status)
    assert after == {**before, 16: "Reached"}
    t16 = trials(again.status)[16]
    assert t16["steps"] == expected_steps(16, 50, A, B) and t16["reason"] is None
    assert t16["restarts"] == 0  # a fresh backoff budget
    assert again.status["criticalBatchSize"]["measured"] == 16  # the retried trial counts
    degraded = next(c for c in again.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "False"
    assert not [w for w in again.status["warnings"] if "failed" in w]
    on_disk = yaml.safe_load((out / "status.yaml").read_text())
    assert phases(on_disk) == after


def trials(status: dict) -> dict[int, dict]:
    return {t["batchSize"]: t for t in status["trials"]}


def test_retry_failed_needs_resume(tmp_path, capsys):
    with pytest.raises(RunError, match=r"^--retry-failed: only with --resume"):
        LocalRun(local_manifest(), RunOptions(out_dir=tmp_path / "o", retry_failed=True,
                                              trainer_command=FAKE_TRAINER)).prepare()
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump(local_manifest()))
    code = main(["run", str(sweep), "-o", str(tmp_path / "o"), "--retry-failed",
                 "--trainer", " ".join(FAKE_TRAINER)])
    assert code == 2
    assert capsys.readouterr().err.startswith("critbatch: error: --retry-failed:")
    assert not (tmp_path / "o").exists()
