"""The process supervisor: exit statuses, log files, stopping whole process groups, no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from local_helpers import alive, wait_until

from critbatch.local.processes import ExitKind, Supervisor, classify, log_tail, thread_limit


@pytest.mark.parametrize(("code", "kind"), [
    (0, ExitKind.FINISHED), (2, ExitKind.BAD_CONFIG), (1, ExitKind.CRASHED),
    (143, ExitKind.TERMINATED), (-signal.SIGTERM, ExitKind.TERMINATED),
    (-signal.SIGKILL, ExitKind.KILLED), (137, ExitKind.KILLED), (3, ExitKind.CRASHED),
])
def test_exit_status_is_classified_as_the_trainer_contract_says(code, kind):
    assert classify(code) is kind


def test_thread_limit_shares_the_cores_between_parallel_trials():
    assert thread_limit(2, cpus=2) == 1
    assert thread_limit(2, cpus=16) == 8
    assert thread_limit(8, cpus=2) == 1


def test_output_goes_to_the_trial_log_and_the_exit_code_is_reaped(tmp_path):
    log = tmp_path / "t" / "trainer.log"
    with Supervisor(threads=3) as sup:
        proc = sup.start("t", [sys.executable, "-c",
                               "import os; print('threads', os.environ['OMP_NUM_THREADS']);"
                               "raise SystemExit(7)"], log)
        assert wait_until(lambda: proc.poll() is not None)
        ended = sup.reap()
    assert [(p.name, code) for p, code in ended] == [("t", 7)]
    text = log.read_text()
    assert "# " in text.splitlines()[0] and "start:" in text.splitlines()[0]
    assert "threads 3" in text
    assert log_tail(log) == "threads 3"


def test_a_kill_9_is_seen_as_killed_not_as_a_finished_run(tmp_path):
    with Supervisor() as sup:
        proc = sup.start("t", ["sleep", "30"], tmp_path / "log")
        os.kill(proc.pid, signal.SIGKILL)
        assert wait_until(lambda: proc.poll() is not None)
        (_, code), = sup.reap()
    assert classify(code) is ExitKind.KILLED


def test_stop_all_ends_the_whole_group_even_a_child_that_ignores_sigterm(tmp_path):
    script = textwrap.dedent("""
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen(["sleep", "60"])
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    log = tmp_path / "log"
    sup = Supervisor()
    proc = sup.start("t", [sys.executable, "-c", script], log)
    assert wait_until(lambda: log_tail(log).isdigit())
    grandchild = int(log_tail(log))
    ended = sup.stop_all(grace=1.0)
    assert [p.name for p, _ in ended] == ["t"]
    assert ended[0][1] == -signal.SIGKILL  # it ignored SIGTERM, so the grace ran out
    assert not alive(proc.pid)
    assert wait_until(lambda: not alive(grandchild), timeout=5)


def test_a_killed_runner_leaves_no_trainer_behind(tmp_path):
    """Trials get a parent-death signal: kill -9 of the runner takes its trials with it."""
    runner = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from critbatch.local.processes import Supervisor
        sup = Supervisor()
        p = sup.start("t", ["sleep", "60"], Path({str(tmp_path / "log")!r}))
        print(p.pid, flush=True)
        time.sleep(60)
    """)
    outer = subprocess.Popen([sys.executable, "-c", runner], stdout=subprocess.PIPE, text=True)
    try:
        trial = int(outer.stdout.readline())
        assert alive(trial)
        outer.kill()
        outer.wait(10)
        assert wait_until(lambda: not alive(trial), timeout=5)
    finally:
        outer.kill()
        outer.wait()
        outer.stdout.close()


def test_request_stop_sends_sigterm_and_marks_the_stop_as_ours(tmp_path):
    with Supervisor() as sup:
        proc = sup.start("t", ["sleep", "30"], tmp_path / "log")
        sup.request_stop("t")
        assert wait_until(lambda: proc.poll() is not None)
        (ended, code), = sup.reap()
    assert ended.stop_requested
    assert classify(code) is ExitKind.TERMINATED
