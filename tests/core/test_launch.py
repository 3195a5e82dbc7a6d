"""critbatch.launch: the launcher's command line of a data-parallel trial, and what its error
report says about the trial's workers.

The reports are the launcher's own output (torch.distributed.run of PyTorch 2.x), captured from
two-worker trials on one machine; only file paths and the program's name are changed.
"""

from __future__ import annotations

import pytest

from critbatch.launch import (
    LAUNCHER_MODULE,
    Rendezvous,
    failure_summary,
    launch_command,
    root_cause,
)

PY = "/usr/bin/python3"
PROGRAM = [PY, "-m", "critbatch_trainer", "--batch-size", "64"]

_TRACEBACK = """\
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "<frozen runpy>", line 88, in _run_code
  File "/usr/lib/python3/site-packages/torch/distributed/run.py", line 1142, in <module>
    main()
  File "/usr/lib/python3/site-packages/torch/distributed/launcher/api.py", line 386, in launch_agent
    raise ChildFailedError(
"""

# Rank 1 killed by SIGKILL (kill -9, the OOM killer): the launcher SIGTERMs rank 0, which
# checkpoints and exits 143, and exits 1 itself.
KILLED = """\
rank 0 of 2 local 0
rank 1 of 2 local 1
W1130 10:46:32.038000 16609 torch/distributed/elastic/multiprocessing/api.py:1028] Sending \
process 16650 closing signal SIGTERM
rank 0 got SIGTERM
E1130 10:46:32.755000 16609 torch/distributed/elastic/multiprocessing/api.py:1002] failed \
(exitcode: -9) local_rank: 1 (pid: 16651) of binary: /usr/bin/python3
""" + _TRACEBACK + """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n\
============================================================
critbatch_trainer FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-30_10:46:32
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 143 (pid: 16650) \n\
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-30_10:46:32
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 16651)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 16651
============================================================
"""

# KILLED had rank 0 raised in its collective before the launcher looked: both failures are
# seen in one poll, in the same second, and the first of them is the "root cause".
RACE = """\
============================================================
critbatch_trainer FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-30_10:46:32
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 16651)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 16651
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-30_10:46:32
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 16650) \n\
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
"""

# Rank 1 exits 2 (a bad configuration) after rank 0 finished: no other failures.
BAD_CONFIG = """\
============================================================
critbatch_trainer FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-30_10:53:16
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : 2 (pid: 20734) \n\
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
"""

# A worker whose main is decorated with torch's @record: its traceback is in the report.
RECORDED = """\
============================================================
critbatch_trainer FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-30_10:48:32
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 17966)  (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 17966
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-30_10:48:30
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : 1 (pid: 17970) \n\
  error_file: /var/run/torchelastic_1l4fszss/attempt_0/1/error.json
  traceback : Traceback (most recent call last):
    File "/usr/lib/python3/site-packages/torch/distributed/elastic/multiprocessing/errors/\
__init__.py", line 380, in wrapper
      return f(*args, **kwargs)
             ^^^^^^^^^^^^^^^^^^
    File "/app/train.py", line 6, in main
      raise ValueError("--batch-size: 30 is not divisible by 4 workers")
  ValueError: --batch-size: 30 is not divisible by 4 workers
  \n\
============================================================
"""

# The launcher got SIGTERM (Ctrl-C in the runner, a pod being deleted): it SIGTERMs its
# workers, which checkpoint and exit 143, and exits 1 with this traceback: no report.
STOPPED = """\
{"sweep": "fake", "batch_size": 16}
W1130 10:46:54.619000 16997 torch/distributed/elastic/agent/server/api.py:753] Received 15 \
death signal, shutting down workers
W1130 10:46:54.620000 16997 torch/distributed/elastic/multiprocessing/api.py:1028] Sending \
process 17002 closing signal SIGTERM
rank 0 got SIGTERM
""" + _TRACEBACK + """\
  File "/usr/lib/python3/site-packages/torch/distributed/elastic/multiprocessing/api.py", \
line 86, in _terminate_process_handler
    raise SignalException(f"Process {os.getpid()} got signal: {sigval}", sigval=sigval)
torch.distributed.elastic.multiprocessing.api.SignalException: Process 16997 got signal: 15
"""


# -- the command line ---------------------------------------------------------------------------


def test_one_worker_runs_the_program_itself():
    assert launch_command(PROGRAM, python=PY, processes=1) == PROGRAM


def test_workers_on_one_machine_meet_standalone_and_are_never_restarted():
    cmd = launch_command(PROGRAM, python=PY, processes=4)
    assert cmd == [PY, "-m", LAUNCHER_MODULE, "--nnodes=1", "--nproc-per-node=4",
                   "--max-restarts=0", "--standalone", "--no-python", *PROGRAM]


def test_several_nodes_meet_at_node_0():
    cmd = launch_command(PROGRAM, python=PY, processes=2, nodes=3,
                         rendezvous=Rendezvous("trial-0.trials", "$(JOB_COMPLETION_INDEX)"))
    assert cmd[:6] == [PY, "-m", LAUNCHER_MODULE, "--nnodes=3", "--nproc-per-node=2",
                       "--max-restarts=0"]
    assert cmd[6:10] == ["--rdzv-backend=static", "--node-rank=$(JOB_COMPLETION_INDEX)",
                         "--master-addr=trial-0.trials", "--master-port=29400"]
    assert cmd[10:] == ["--no-python", *PROGRAM]


@pytest.mark.parametrize(("processes", "nodes", "rendezvous", "says"), [
    (0, 1, None, "at least 1"),
    (1, 0, None, "at least 1"),
    (1, 2, None, "needs a rendezvous"),
])
def test_a_bad_world_is_refused(processes, nodes, rendezvous, says):
    with pytest.raises(ValueError, match=says):
        launch_command(PROGRAM, python=PY, processes=processes, nodes=nodes,
                       rendezvous=rendezvous)


# -- the report ---------------------------------------------------------------------------------


def test_a_killed_rank_is_named_with_its_signal():
    assert failure_summary(KILLED) == "rank 1 (local rank 1) was killed by SIGKILL (exitcode -9)"
    failure = root_cause(KILLED)
    assert (failure.rank, failure.local_rank, failure.exitcode) == (1, 1, -9)


def test_a_rank_that_exits_is_named_with_its_code():
    assert failure_summary(BAD_CONFIG) == "rank 1 (local rank 1) exited with code 2"


def test_a_recorded_traceback_adds_its_exception():
    assert failure_summary(RECORDED) == (
        "rank 1 (local rank 1) exited with code 1: ValueError: --batch-size: 30 is not "
        "divisible by 4 workers")


def test_a_worker_on_another_node_is_named_with_its_host():
    report = KILLED.replace("rank      : 1 (local_rank: 1)", "rank      : 5 (local_rank: 1)")
    report = report.replace("host      : localhost", "host      : sweep-b64-s0-2-x7k2p")
    assert failure_summary(report) == ("rank 5 (local rank 1 on sweep-b64-s0-2-x7k2p) was "
                                       "killed by SIGKILL (exitcode -9)")


def test_no_report_no_summary():
    assert failure_summary(STOPPED) is None
    assert failure_summary("") is None
    assert failure_summary('{"steps": 100}\n') is None


def test_the_latest_report_counts():
    assert failure_summary(KILLED + "\nrestarted\n" + BAD_CONFIG) == \
        "rank 1 (local rank 1) exited with code 2"


def test_a_rank_killed_in_the_same_second_wins_over_one_that_raised_because_of_it():
    """Failures seen in one poll are in rank order and timed to the second: rank 0 raising in
    a collective because rank 1 was killed comes first, but it is not the cause."""
    assert failure_summary(RACE) == "rank 1 (local rank 1) was killed by SIGKILL (exitcode -9)"
    later = RACE.replace("10:46:32\n  host      : localhost\n  rank      : 1",
                         "10:46:33\n  host      : localhost\n  rank      : 1")
    assert failure_summary(later) == "rank 0 (local rank 0) exited with code 1"
