"""The command line of a data-parallel trial: PyTorch's elastic launcher
(`torch.distributed.run`, alias `torchrun`) starting the trial's worker processes on each node,
through `critbatch_trainer.launcher`, which exits as the workers did (2 for a bad configuration,
143 when stopped by SIGTERM, else 1); and which worker failed first, read from the launcher's
report (docs/distributed.md). Pure: the operator and the local runner call it with their own
program.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass

LAUNCHER_MODULE = "critbatch_trainer.launcher"  # torch.distributed.run, with exit codes
RENDEZVOUS_PORT = 29400  # node 0's launcher listens here; the workers' own ports are free ones


@dataclass(frozen=True)
class Rendezvous:
    """Where the launchers of a several-node trial meet: node 0's address, and this node's
    rank as text (on Kubernetes `$(JOB_COMPLETION_INDEX)`, which the kubelet expands)."""

    host: str
    node_rank: str
    port: int = RENDEZVOUS_PORT


def launch_command(program: Sequence[str], *, python: str, processes: int, nodes: int = 1,
                   rendezvous: Rendezvous | None = None) -> list[str]:
    """`program` as one trial of `nodes` x `processes` workers; as it is for a single worker.

    The launcher runs `program` itself (`--no-python`), never through a shell, and restarts
    nothing (`--max-restarts=0`): a retry is the Job's or the runner's, from the checkpoint.
    """
    if processes < 1 or nodes < 1:
        raise ValueError(f"processes and nodes must be at least 1, not {processes}, {nodes}")
    if processes * nodes == 1:
        return list(program)
    cmd = [python, "-m", LAUNCHER_MODULE, f"--nnodes={nodes}",
           f"--nproc-per-node={processes}", "--max-restarts=0"]
    if nodes == 1:
        cmd.append("--standalone")
    elif rendezvous is None:
        raise ValueError(f"a trial on {nodes} nodes needs a rendezvous")
    else:
        cmd += ["--rdzv-backend=static", f"--node-rank={rendezvous.node_rank}",
                f"--master-addr={rendezvous.host}", f"--master-port={rendezvous.port}"]
    return [*cmd, "--no-python", *program]


# -- what the launcher reports when a trial's workers fail ----------------------------------------

_FAILURES = "Failures:"
_ROOT_CAUSE = "Root Cause (first observed failure):"
_ENTRY = re.compile(r"^\[\d+\]:\s*$")
_FIELD = re.compile(r"^\s*(\w+)\s*:\s?(.*)$")
_RANK = re.compile(r"^(\d+)(?:\s*\(local_rank:\s*(\d+)\))?")
_EXITCODE = re.compile(r"^(-?\d+)")
_NO_TRACEBACK = ("To enable traceback see", "Signal ")


@dataclass(frozen=True)
class WorkerFailure:
    """A worker of a trial that failed, as the launcher's error report names it."""

    rank: int
    local_rank: int | None
    exitcode: int
    host: str | None = None
    time: str | None = None  # when the launcher saw it, to the second
    error: str | None = None  # the last line of its traceback, when it recorded one

    @property
    def signalled(self) -> bool:
        """Killed by a signal other than the SIGTERM the launcher stops the others with."""
        return self.exitcode < 0 and self.exitcode != -signal.SIGTERM

    def __str__(self) -> str:
        where = f"local rank {self.local_rank}" if self.local_rank is not None else ""
        if self.host and self.host != "localhost":
            where = f"{where} on {self.host}" if where else f"on {self.host}"
        who = f"rank {self.rank}" + (f" ({where})" if where else "")
        if self.exitcode < 0:
            what = f"was killed by {_signal_name(-self.exitcode)} (exitcode {self.exitcode})"
        else:
            what = f"exited with code {self.exitcode}"
        return f"{who} {what}" + (f": {self.error}" if self.error else "")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _entries(section: str) -> list[WorkerFailure]:
    """The `[i]:` entries of one section of the report, in its order."""
    blocks: list[list[str]] = []
    for line in section.splitlines():
        if line.startswith(("=" * 8, "-" * 8)):
            break
        if _ENTRY.match(line):
            blocks.append([])
        elif blocks:
            blocks[-1].append(line)
    return [f for f in map(_entry, blocks) if f is not None]


def _entry(lines: list[str]) -> WorkerFailure | None:
    fields: dict[str, str] = {}
    traceback: list[str] = []
    for line in lines:
        match = _FIELD.match(line)
        if traceback or (match and match.group(1) == "traceback"):
            traceback.append(match.group(2) if not traceback and match else line)
        elif match and match.group(1) not in fields:
            fields[match.group(1)] = match.group(2).strip()
    rank = _RANK.match(fields.get("rank", ""))
    code = _EXITCODE.match(fields.get("exitcode", ""))
    if rank is None or code is None:
        return None
    return WorkerFailure(
        rank=int(rank.group(1)),
        local_rank=int(rank.group(2)) if rank.group(2) is not None else None,
        exitcode=int(code.group(1)), host=fields.get("host") or None,
        time=fields.get("time") or None, error=_last_error(traceback))


def _last_error(traceback: list[str]) -> str | None:
    """The exception line that ends a recorded traceback; None for the launcher's stock text."""
    lines = [ln.strip() for ln in traceback if ln.strip()]
    if not lines or lines[0].startswith(_NO_TRACEBACK):
        return None
    return lines[-1]


def root_cause(report: str) -> WorkerFailure | None:
    """The worker whose failure ended the trial, from the launcher's output `report`; None
    when it names none (the trial succeeded, or the launcher itself failed or was stopped).

    That is the report's "Root Cause (first observed failure)", unless it exited 1 (an
    error) while another worker seen in the same second was killed by a signal: the launcher
    times failures to the second, and a worker killed (say by the OOM killer) makes the
    others raise in their next collective, often before the launcher looks.
    """
    at = report.rfind(_ROOT_CAUSE)
    if at < 0:
        return None
    roots = _entries(report[at + len(_ROOT_CAUSE):])
    if not roots:
        return None
    root = roots[0]
    start = report.rfind(_FAILURES, 0, at)
    others = _entries(report[start + len(_FAILURES):at]) if start >= 0 else []
    if root.exitcode == 1:
        killed = [f for f in others if f.signalled and f.time == root.time]
        if killed:
            return killed[0]
    return root


def failure_summary(report: str) -> str | None:
    """Which worker failed first and how, from the launcher's output: e.g. `rank 1 (local
    rank 1) was killed by SIGKILL (exitcode -9)`; None when `report` names no failed worker."""
    failure = root_cause(report)
    return str(failure) if failure is not None else None
