"""Which trials start warm, and a warm server that does not come up leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from critbatch.local.warm import (
    WarmServers,
    WarmStarts,
    can_start_warm,
    remove_stale_directories,
)

BUILTIN = [sys.executable, "-m", "critbatch_trainer"]


@pytest.mark.parametrize(("command", "custom", "workers", "warm"), [
    (BUILTIN, False, 1, True),
    (BUILTIN, False, 2, False),  # PyTorch's launcher starts the workers
    (BUILTIN, True, 1, False),  # spec.trainer.command
    (["python", "my_trainer.py"], False, 1, False),  # --trainer
    (["-m", "critbatch_trainer"], False, 1, False),  # no interpreter to serve with
])
def test_only_one_process_trials_of_the_built_in_trainer_start_warm(command, custom, workers,
                                                                    warm) -> None:
    assert can_start_warm(command, custom=custom, workers=workers) is warm


def test_a_server_that_cannot_start_means_cold_trials_one_warning_and_no_socket_directory(
        tmp_path: Path) -> None:
    before = set(os.listdir(tempfile.gettempdir()))
    events, warnings = [], []
    warm = WarmStarts(["false", "-m", "critbatch_trainer"], tmp_path / "warm.log",
                      {"PATH": os.environ["PATH"]}, reproducible=False,
                      log=lambda kind, **f: events.append(kind), warn=warnings.append)
    assert warm.trial_argv(["--batch-size", "8"]) is None
    assert warm.trial_argv(["--batch-size", "16"]) is None
    assert events == [] and len(warnings) == 1 and "warm starts: the server ended" in warnings[0]
    after = set(os.listdir(tempfile.gettempdir()))
    assert not {d for d in after - before if d.startswith("critbatch-warm-")}


def test_a_campaigns_sweeps_share_a_server_per_settings_until_the_campaign_ends(
        tmp_path: Path) -> None:
    """Same interpreter, environment and pinning: one server; any difference: another; a dead
    one is replaced; close() ends them all and removes their sockets' directories."""
    idle = [sys.executable, "-c", "import time; time.sleep(60)", "-m", "critbatch_trainer"]
    env = {"PATH": os.environ["PATH"], "CRITBATCH_THREADS": "1"}
    servers = WarmServers(tmp_path / "warm.log")
    first = servers.get(idle, env, reproducible=False)
    assert servers.get(idle, dict(env), reproducible=False) is first
    others = [servers.get(idle, {**env, "CRITBATCH_THREADS": "2"}, reproducible=False),
              servers.get(idle, env, reproducible=True)]
    assert len({id(s) for s in [first, *others]}) == 3
    first.popen.kill()
    first.popen.wait()
    again = servers.get(idle, env, reproducible=False)
    assert again is not first and again.alive() and not first.dir.exists()
    servers.close()
    assert not any(s.alive() or s.dir.exists() for s in [again, *others])


def test_socket_directories_of_runners_that_died_are_removed_and_no_other(tmp_path: Path) -> None:
    """A runner killed with SIGKILL leaves its socket directory; the next run removes it, and
    nothing of a live runner's, another name, or a file."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid now names no process (until reused)
    stale = tmp_path / f"critbatch-warm-{gone.pid}-abc"
    live = tmp_path / f"critbatch-warm-{os.getpid()}-def"
    for d in (stale, live, tmp_path / "critbatch-warm-old", tmp_path / "other-1-x"):
        d.mkdir()
        (d / "s").touch()
    (tmp_path / f"critbatch-warm-{gone.pid}-file").touch()
    remove_stale_directories(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, "critbatch-warm-old", "other-1-x", f"critbatch-warm-{gone.pid}-file"])
