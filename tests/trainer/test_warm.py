"""Warm starts: a trial forked from the warm server is the trial a fresh process runs, its
stand-in passes signals on and takes the trial down with it, and requests are checked."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from critbatch.local.processes import descendants
from critbatch_trainer.warm import MAX_REQUEST, Request, RequestError, read_request

TRIAL = ["--batch-size", "8", "--fid-threshold", "1000", "--max-steps", "40", "--eval-every",
         "20", "--eval-samples", "100", "--device", "cpu", "--threads", "1",
         "--termination-log="]


@pytest.mark.parametrize("body, problem", [
    (b"{", "not JSON"),
    (b"[]", "an object of argv, env and cwd"),
    (b'{"argv": [], "env": {}}', "an object of argv, env and cwd"),
    (b'{"argv": "x", "env": {}, "cwd": "/"}', "argv"),
    (b'{"argv": ["a\\u0000"], "env": {}, "cwd": "/"}', "argv"),
    (b'{"argv": [], "env": {"A=B": "c"}, "cwd": "/"}', "env"),
    (b'{"argv": [], "env": {"A": 1}, "cwd": "/"}', "env"),
    (b'{"argv": [], "env": {}, "cwd": "relative"}', "cwd"),
])
def test_a_malformed_request_is_refused_with_its_reason(body: bytes, problem: str) -> None:
    with pytest.raises(RequestError, match=problem):
        Request.decode(body)


def test_a_request_round_trips_and_an_oversized_one_is_refused_unread() -> None:
    ok = Request(["--batch-size", "8"], {"A": "b"}, "/")
    for size, expect in ((None, ok), (MAX_REQUEST + 1, None)):
        a, b = socket.socketpair()
        with a, b, open(os.devnull) as null:
            payload = ok.encode() if size is None else size.to_bytes(4, "big")
            socket.send_fds(a, [payload], [null.fileno()] * 3)
            if expect is None:
                with pytest.raises(RequestError, match="more than"):
                    read_request(b)
            else:
                got, fds = read_request(b)
                assert got == expect and len(fds) == 3
                for fd in fds:
                    os.close(fd)


def _trainer(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _serve(path, *flags: str) -> subprocess.Popen:
    proc = _trainer("critbatch_trainer.warm", "serve", str(path), *flags,
                    start_new_session=True)
    deadline = time.monotonic() + 120
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), proc.communicate()
    return proc


def _stop(proc: subprocess.Popen, path) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    assert not path.exists()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("warm") / "s"
    proc = _serve(path)
    yield proc, str(path)
    _stop(proc, path)


def test_a_warm_trial_reports_exactly_what_a_fresh_process_does(server, tmp_path) -> None:
    _, path = server
    cold = _trainer("critbatch_trainer", *TRIAL, "--stats-cache", str(tmp_path))
    out, err = cold.communicate(timeout=120)
    assert cold.returncode == 0, err
    warm = _trainer("critbatch_trainer.warm", "run", path, "--", *TRIAL, "--stats-cache",
                    str(tmp_path), cwd=tmp_path)
    wout, werr = warm.communicate(timeout=120)
    assert warm.returncode == 0, werr

    def result(text: str) -> dict:
        data = json.loads(text.strip().splitlines()[-1])
        del data["wall_seconds"]
        return data

    assert result(wout) == result(out)
    assert "timings: start=" in werr and "step 40 fid" in werr


def test_a_server_with_pinned_numerics_runs_pinned_trials_as_fresh_processes_do(
        tmp_path) -> None:
    """The pinning variables take effect when torch loads, in the server: its trials keep
    them whatever environment they are handed, and report what a fresh pinned process does."""
    pinned = [*TRIAL[:4], "--max-steps", "20", *TRIAL[6:], "--reproducible-cpu",
              "--stats-cache", str(tmp_path)]
    cold = _trainer("critbatch_trainer", *pinned)
    out, err = cold.communicate(timeout=120)
    assert cold.returncode == 0, err
    path = tmp_path / "s"
    proc = _serve(path, "--reproducible-cpu")
    try:
        warm = _trainer("critbatch_trainer.warm", "run", str(path), "--", *pinned)
        wout, werr = warm.communicate(timeout=120)
    finally:
        _stop(proc, path)
    assert warm.returncode == 0, werr
    results = [json.loads(text.strip().splitlines()[-1]) for text in (out, wout)]
    for r in results:
        del r["wall_seconds"]
        assert r["hardware"]["reproducible"] is True and r["hardware"]["isa"] == "DEFAULT"
    assert results[0] == results[1]


def test_signals_reach_the_trial_and_a_killed_stand_in_takes_it_down(server, tmp_path) -> None:
    proc, path = server
    long = [*TRIAL[:2], "--fid-threshold", "1", "--max-steps", "100000", *TRIAL[6:]]
    stopped = _trainer("critbatch_trainer.warm", "run", path, "--", *long, "--checkpoint-dir",
                       str(tmp_path / "ck"), "--stats-cache", str(tmp_path))
    time.sleep(4)
    stopped.send_signal(signal.SIGTERM)
    _, err = stopped.communicate(timeout=60)
    assert stopped.returncode == 128 + signal.SIGTERM, err
    assert "stopped by signal" in err and (tmp_path / "ck" / "checkpoint.pt").exists()

    victim = _trainer("critbatch_trainer.warm", "run", path, "--", *long, "--stats-cache",
                      str(tmp_path))
    deadline = time.monotonic() + 30
    while not descendants(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert descendants(proc.pid), "the server forked no trial"
    victim.kill()
    victim.communicate(timeout=10)
    deadline = time.monotonic() + 10
    while descendants(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert descendants(proc.pid) == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_forked_trial_initialises_cuda_itself_and_trains_on_it(server, tmp_path) -> None:
    """The server never touches the GPU, so a trial forked from it can: it trains on CUDA."""
    _, path = server
    flags = [*TRIAL[:TRIAL.index("--device")], "--device", "cuda", "--termination-log=",
             "--stats-cache", str(tmp_path)]
    warm = _trainer("critbatch_trainer.warm", "run", path, "--", *flags, cwd=tmp_path)
    out, err = warm.communicate(timeout=180)
    assert warm.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["hardware"]["device"] == "cuda" and result["steps"] in (20, 40), result
