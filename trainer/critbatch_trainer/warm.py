"""Warm starts: one server process imports torch and the trainer once and forks each trial.

A fresh interpreter spends seconds importing torch (and torch._dynamo, which the first
optimizer pulls in) before a trial trains; a sweep pays that per trial. Here a server pays it
once, then forks a trial per request, which starts with everything imported.

    python -m critbatch_trainer.warm serve SOCKET [--reproducible-cpu]
    python -m critbatch_trainer.warm run SOCKET -- TRAINER-ARGS...

`run` is the trial as its runner sees it: it hands the server its standard streams,
arguments, environment and working directory, passes SIGTERM and SIGINT on to the trial, and
exits as the trial did (its code, or killed by its signal). If `run` dies, the server kills
the trial; if the server dies, its trials die too. Only the server's user may connect (the
socket's directory is private and the peer's uid is checked), and a request is bounded and
validated before anything is forked. Until `serve` loads the trainer this module imports only
the standard library and critbatch's torch-free `orphans`, so `run` starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import selectors
import signal
import socket
import struct
import sys
import traceback
from dataclasses import dataclass
from typing import Any

from critbatch.orphans import end_with_parent

MAX_REQUEST = 1 << 20  # bytes: arguments and environment of one trial
_HEADER = struct.Struct("!I")
_PASSED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RequestError(ValueError):
    """A request the server refuses, with the reason."""


@dataclass(frozen=True)
class Request:
    """What a trial needs from the process that asked for it."""

    argv: list[str]
    env: dict[str, str]
    cwd: str

    def encode(self) -> bytes:
        body = json.dumps({"argv": self.argv, "env": self.env, "cwd": self.cwd}).encode()
        return _HEADER.pack(len(body)) + body

    @classmethod
    def decode(cls, body: bytes) -> Request:
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RequestError(f"not JSON: {e}") from None
        if not isinstance(data, dict) or set(data) != {"argv", "env", "cwd"}:
            raise RequestError("expected an object of argv, env and cwd")
        argv, env, cwd = data["argv"], data["env"], data["cwd"]
        if not (isinstance(argv, list) and all(isinstance(a, str) and "\0" not in a
                                               for a in argv)):
            raise RequestError("argv: expected a list of strings")
        if not (isinstance(env, dict) and all(
                isinstance(k, str) and isinstance(v, str) and k and "=" not in k
                and "\0" not in k + v for k, v in env.items())):
            raise RequestError("env: expected a mapping of variable names to strings")
        if not isinstance(cwd, str) or not cwd.startswith("/") or "\0" in cwd:
            raise RequestError("cwd: expected an absolute path")
        return cls(argv, env, cwd)


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = conn.recv(min(n - got, 65536))
        if not chunk:
            raise RequestError("the connection closed mid-request")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_request(conn: socket.socket) -> tuple[Request, list[int]]:
    """The request on `conn` and the three descriptors (stdin, stdout, stderr) sent with it;
    RequestError (the received descriptors closed) when it is not a well-formed one."""
    msg, fds, _flags, _addr = socket.recv_fds(conn, _HEADER.size, 3)
    try:
        if len(fds) != 3:
            raise RequestError(f"expected 3 descriptors, got {len(fds)}")
        if len(msg) < _HEADER.size:
            msg += _recv_exact(conn, _HEADER.size - len(msg))
        (size,) = _HEADER.unpack(msg)
        if size > MAX_REQUEST:
            raise RequestError(f"{size} bytes, more than {MAX_REQUEST}")
        return Request.decode(_recv_exact(conn, size)), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


# -- the server -------------------------------------------------------------------------------


def _preload(reproducible: bool) -> tuple[Any, dict[str, str]]:
    """Import what every trial imports, without starting any device: the trainer's main, and
    the variables the libraries were loaded under that each trial's environment must keep
    (the pinned CPU numerics' ones: a forked trial runs under them whatever it is given)."""
    kept: dict[str, str] = {}
    if reproducible:
        from critbatch_trainer import numerics

        numerics.pin_environment()
        kept = dict(numerics.REPRODUCIBLE_ENV)
    import torch
    import torch._dynamo  # the first optimizer imports it: seconds

    from critbatch_trainer import __main__ as trainer_main
    from critbatch_trainer import checkpoint, config, loop, metrics  # noqa: F401

    if torch.cuda.is_initialized():
        raise RuntimeError("CUDA was initialised before forking: a forked trial could not use it")
    return trainer_main.main, kept


def _child(main: Any, kept: dict[str, str], request: Request,
           fds: list[int]) -> None:  # pragma: no cover - forked
    """The trial, in the forked process: it never returns."""
    code = 1
    try:
        os.setsid()
        end_with_parent(signal.SIGKILL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, max(os.sysconf("SC_OPEN_MAX"), 4096))
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.chdir(request.cwd)
        os.environ.clear()
        os.environ.update({**request.env, **kept})
        sys.argv = ["critbatch_trainer", *request.argv]
        code = main(request.argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def serve(path: str, *, reproducible: bool = False) -> int:
    """Fork a trial for each request on the Unix socket at `path` until SIGTERM (Ctrl-C is
    the runner's to handle). `path` appears once the server listens."""
    main, kept = _preload(reproducible)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_mask = os.umask(0o177)
    try:
        listener.bind(path + ".binding")
    finally:
        os.umask(old_mask)
    listener.listen(64)
    os.rename(path + ".binding", path)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    trials: dict[int, tuple[socket.socket, int]] = {}  # pid -> (connection, pidfd)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner decides when the server ends
    print(f"warm: ready on {path}", flush=True)
    try:
        while not stopping:
            for key, _ in sel.select(timeout=0.5):
                if key.data is None:
                    _accept(listener, sel, functools.partial(_child, main, kept), trials)
                else:
                    kind, pid = key.data
                    if kind == "exit":
                        _ended(pid, trials, sel)
                    else:
                        _orphaned(pid, trials, sel)
    finally:
        for pid, (conn, _pidfd) in list(trials.items()):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
            conn.close()
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
    return 0


def _accept(listener: socket.socket, sel: selectors.BaseSelector, child: Any,
            trials: dict[int, tuple[socket.socket, int]]) -> None:
    conn, _ = listener.accept()
    try:
        conn.settimeout(10.0)
        if _peer_uid(conn) != os.getuid():
            raise RequestError("a process of another user")
        request, fds = read_request(conn)
    except (RequestError, OSError, struct.error) as e:
        print(f"warm: refused a request: {e}", file=sys.stderr, flush=True)
        conn.close()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        child(request, fds)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    trials[pid] = (conn, pidfd)
    conn.settimeout(None)
    conn.sendall(f"pid {pid}\n".encode())
    sel.register(pidfd, selectors.EVENT_READ, ("exit", pid))
    sel.register(conn, selectors.EVENT_READ, ("conn", pid))


def _ended(pid: int, trials: dict[int, tuple[socket.socket, int]],
           sel: selectors.BaseSelector) -> None:
    """Tell the trial's `run` how it ended and forget it."""
    conn, pidfd = trials.pop(pid)
    _, status = os.waitpid(pid, 0)
    with contextlib.suppress(OSError):
        conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
    sel.unregister(pidfd)
    with contextlib.suppress(KeyError, ValueError):
        sel.unregister(conn)
    os.close(pidfd)
    conn.close()


def _orphaned(pid: int, trials: dict[int, tuple[socket.socket, int]],
              sel: selectors.BaseSelector) -> None:
    """The trial's `run` went away (or wrote, which it never does): its trial goes too, and
    is reaped when its exit is seen."""
    conn, _ = trials[pid]
    sel.unregister(conn)
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


# -- the trial's stand-in ---------------------------------------------------------------------


def run(path: str, argv: list[str]) -> int:
    """Have the server at `path` run the trainer with `argv` here; the trial's exit code."""
    pending: list[int] = []
    trial = [0]

    def forward(signum: int, _frame: object) -> None:
        if trial[0]:
            with contextlib.suppress(OSError):
                os.killpg(trial[0], signum)
        else:
            pending.append(signum)

    for s in _PASSED_SIGNALS:
        signal.signal(s, forward)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError as e:
        print(f"critbatch-trainer: error: warm server at {path}: {e.strerror or e}",
              file=sys.stderr, flush=True)
        return 1
    request = Request(argv, dict(os.environ), os.getcwd())
    socket.send_fds(conn, [request.encode()], [0, 1, 2])
    reader = conn.makefile("r", encoding="ascii")
    code: int | None = None
    for line in reader:
        word, _, value = line.strip().partition(" ")
        if word == "pid" and value.isdigit():
            trial[0] = int(value)
            for s in pending:
                forward(s, None)
        elif word == "exit" and value.lstrip("-").isdigit():
            code = int(value)
            break
    if code is None:
        print("critbatch-trainer: error: the warm server went away", file=sys.stderr,
              flush=True)
        return 1
    if code < 0:  # killed by a signal: end the same way, as the runner reads exit statuses
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


def main(args: list[str] | None = None) -> int:
    args = sys.argv[1:] if args is None else args
    if len(args) >= 2 and args[0] == "serve":
        return serve(args[1], reproducible="--reproducible-cpu" in args[2:])
    if len(args) >= 3 and args[0] == "run" and args[2] == "--":
        return run(args[1], args[3:])
    print("usage: python -m critbatch_trainer.warm serve SOCKET [--reproducible-cpu]\n"
          "       python -m critbatch_trainer.warm run SOCKET -- TRAINER-ARGS...",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
