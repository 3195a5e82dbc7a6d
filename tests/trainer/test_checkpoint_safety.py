"""Checkpoints that must not hurt: hostile or corrupt files, bad directories, full disks, ports.

A checkpoint is loaded weights-only (nothing in it runs); one that cannot be used is set aside
and the trial starts from step 0, reaching exactly the result of a run that never had one. A
bad --checkpoint-dir or --metrics-port is a one-line configuration error (exit 2); a full disk
is one line and exit 1.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickletools
import socket
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from trainer_helpers import run_trainer

from critbatch_trainer import checkpoint
from critbatch_trainer.__main__ import main
from critbatch_trainer.config import ConfigError, parse_args
from critbatch_trainer.loop import Trial

pytestmark = pytest.mark.timeout(300)

# A censored 40-step digits trial: two FID evaluations, a few seconds.
COMMON = ["--dataset", "digits", "--lr-g", "5e-4", "--lr-d", "5e-4", "--fid-threshold", "500",
          "--eval-every", "20", "--eval-samples", "250", "--max-steps", "40", "--threads", "1",
          "--gns-every", "5", "--termination-log", ""]
SHORT = ["--batch-size", "16", *COMMON]
COMPARED = ("reached", "steps", "fid", "interpolated_steps", "gradient_noise_scale")


class _Payload:
    """Unpickling this runs os.mkdir(marker): the shape of a hostile checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.marker,))


def _blob(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _globals(blob: bytes) -> set[str]:
    """Every global a torch checkpoint's pickle asks for, as 'module name'."""
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    found, strings = set(), []
    for op, arg, _pos in pickletools.genops(data):
        if op.name == "GLOBAL":
            found.add(arg)
        elif op.name == "STACK_GLOBAL":
            found.add(" ".join(strings[-2:]))
        elif "UNICODE" in op.name:
            strings.append(arg)
    return found


def _cfg(directory: Path, stats_cache: Path) -> Any:
    return parse_args([*SHORT, "--stats-cache", str(stats_cache),
                       "--checkpoint-dir", str(directory)])


def _train(directory: Path, stats_cache: Path) -> tuple[Trial, bool, list[str]]:
    """Restore from `directory` and train on one thread; (trial, resumed, log lines)."""
    lines: list[str] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trial = Trial.create(_cfg(directory, stats_cache), log=lines.append)
        resumed = trial.restore()
        trial.run()
    finally:
        torch.set_num_threads(threads)
    return trial, resumed, lines


@pytest.fixture(scope="module")
def clean(tmp_path_factory, stats_cache) -> dict[str, Any]:
    """A run that never saw a bad checkpoint: its result and its final checkpoint."""
    d = tmp_path_factory.mktemp("clean")
    trial, resumed, _ = _train(d, stats_cache)
    assert not resumed
    return {"result": trial.result(), "blob": checkpoint.path(d).read_bytes()}


def _trusted(blob: bytes) -> dict[str, Any]:
    return torch.load(io.BytesIO(blob), weights_only=True)


def _without_identity(blob: bytes) -> bytes:
    state = _trusted(blob)
    del state["identity"]
    return _blob(state)


def _wrong_shape(blob: bytes) -> bytes:
    state = _trusted(blob)  # G loads, then D fails: the trial must be rolled back
    key = next(iter(state["D"]))
    state["D"][key] = torch.zeros(3)
    return _blob(state)


BAD = {
    "truncated": lambda blob, _m: blob[: len(blob) // 2],
    "empty": lambda _b, _m: b"",
    "garbage": lambda _b, _m: b"not a checkpoint\n" * 64,
    "malicious pickle": lambda blob, m: _blob({**_trusted(blob), "x": _Payload(m)}),
    "not a dict": lambda _b, _m: _blob([1, 2, 3]),
    "no identity": lambda blob, _m: _without_identity(blob),
    "wrong tensor shape": lambda blob, _m: _wrong_shape(blob),
}


def test_a_hostile_pickle_would_run_but_is_refused_unrun(clean, tmp_path) -> None:
    armed = tmp_path / "armed"
    torch.load(io.BytesIO(BAD["malicious pickle"](clean["blob"], armed)), weights_only=False)
    assert armed.is_dir()  # the payload is live: a plain unpickler runs it
    marker = tmp_path / "marker"
    checkpoint.path(tmp_path).write_bytes(BAD["malicious pickle"](clean["blob"], marker))
    with pytest.raises(checkpoint.CorruptCheckpoint, match="mkdir"):
        checkpoint.load(tmp_path)
    assert not marker.exists()


def test_a_trial_state_asks_for_no_global_beyond_the_allowlist(clean) -> None:
    """Every optimizer's and model's state loads weights-only with SAFE_GLOBALS alone."""
    from timm.optim import AdaBelief

    from critbatch_trainer.models import build
    from critbatch_trainer.optim import make_optimizer

    allowed = {f"{t.__module__} {t.__qualname__}" for t in checkpoint.SAFE_GLOBALS}
    allowed.add("torch._utils _rebuild_tensor_v2")
    blobs = [clean["blob"]]
    net = torch.nn.Linear(3, 2)
    for name in ("adam", "adabelief", "rmsprop"):
        opt = make_optimizer(name, net.parameters(), lr=1e-3, beta1=0.5, beta2=0.999, eps=1e-8)
        if name == "adabelief":
            assert isinstance(opt, AdaBelief)
        net(torch.ones(4, 3)).sum().backward()
        opt.step()
        blobs.append(_blob(opt.state_dict()))
    # spectral norm, conditional batch norm
    nets = build("biggan", image_size=32, channels=3, width=8, z_dim=16, num_classes=10)
    blobs.append(_blob({"G": nets.generator.state_dict(), "D": nets.discriminator.state_dict()}))
    for blob in blobs:
        extra = {g for g in _globals(blob) if not g.endswith("Storage")} - allowed
        assert not extra
        torch.load(io.BytesIO(blob), weights_only=True)


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_checkpoint_is_set_aside_and_the_trial_starts_over(case, clean, tmp_path,
                                                                 stats_cache) -> None:
    d, marker = tmp_path / "ckpt", tmp_path / "marker"
    d.mkdir()
    bad = BAD[case](clean["blob"], marker)
    checkpoint.path(d).write_bytes(bad)
    trial, resumed, lines = _train(d, stats_cache)
    assert not resumed and not marker.exists()
    result = trial.result()
    assert {k: result[k] for k in COMPARED} == {k: clean["result"][k] for k in COMPARED}
    warnings = [line for line in lines if "cannot resume" in line]
    assert len(warnings) == 1 and "\n" not in warnings[0], lines
    assert "kept as checkpoint.pt.corrupt-1, starting from step 0" in warnings[0]
    assert (d / "checkpoint.pt.corrupt-1").read_bytes() == bad
    assert checkpoint.load(d)["step"] == 40  # the new run's own checkpoint


@pytest.mark.parametrize(("field", "value"), [("seed", 7), ("version", 99)])
def test_a_checkpoint_of_another_run_is_refused_not_discarded(field, value, clean, tmp_path,
                                                              stats_cache) -> None:
    state = _trusted(clean["blob"])
    if field == "version":
        state["version"] = value
    else:
        state["identity"][field] = value
    checkpoint.path(tmp_path).write_bytes(_blob(state))
    trial = Trial.create(_cfg(tmp_path, stats_cache), log=lambda _msg: None)
    with pytest.raises(ConfigError, match=f"checkpoint-dir: .*{field}"):
        trial.restore()
    assert checkpoint.path(tmp_path).exists() and not list(tmp_path.glob("*.corrupt-*"))


def test_the_cli_survives_a_hostile_checkpoint(tmp_path, stats_cache) -> None:
    d, marker = tmp_path / "ckpt", tmp_path / "marker"
    d.mkdir()
    checkpoint.path(d).write_bytes(_blob({"version": 1, "x": _Payload(marker)}))
    done = run_trainer(*SHORT, "--stats-cache", str(stats_cache), "--checkpoint-dir", str(d))
    assert done.returncode == 0, done.stderr
    assert not marker.exists()
    assert json.loads(done.stdout.strip().splitlines()[-1])["steps"] == 40
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith(
        "critbatch-trainer: warning: checkpoint-dir: cannot resume"), done.stderr
    assert "mkdir" in warnings[0]
    assert "step 20 fid" in done.stderr  # trained from step 0
    assert (d / "checkpoint.pt.corrupt-1").exists() and checkpoint.load(d)["step"] == 40


def test_only_the_newest_set_aside_checkpoints_are_kept(tmp_path) -> None:
    for n in range(1, 6):
        checkpoint.path(tmp_path).write_text(str(n))
        assert checkpoint.set_aside(tmp_path).name == f"checkpoint.pt.corrupt-{n}"
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == [f"checkpoint.pt.corrupt-{n}" for n in (3, 4, 5)]
    assert (tmp_path / "checkpoint.pt.corrupt-5").read_text() == "5"


def _main(stats_cache: Path, *extra: str) -> int:
    return main([*SHORT, "--stats-cache", str(stats_cache), *extra])


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def test_a_checkpoint_dir_that_is_a_file_exits_2(tmp_path, stats_cache, capsys) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert _main(stats_cache, "--checkpoint-dir", str(afile)) == 2
    assert _one_error_line(capsys).startswith(
        "critbatch-trainer: error: checkpoint-dir: ") and afile.read_text() == "x"
    assert _main(stats_cache, "--checkpoint-dir", str(afile / "sub")) == 2
    assert "cannot write to" in _one_error_line(capsys)
    checkpoint.path(tmp_path / "d").mkdir(parents=True)
    assert _main(stats_cache, "--checkpoint-dir", str(tmp_path / "d")) == 2
    assert "checkpoint.pt exists and is not a file" in _one_error_line(capsys)


def test_an_unwritable_checkpoint_dir_exits_2(tmp_path, stats_cache, capsys) -> None:
    d = tmp_path / "ro"
    d.mkdir(mode=0o500)
    try:
        (d / "probe").touch()
    except PermissionError:
        pass
    else:
        pytest.skip("this user writes to any directory (root with CAP_DAC_OVERRIDE)")
    try:
        assert _main(stats_cache, "--checkpoint-dir", str(d)) == 2
    finally:
        d.chmod(0o700)
    assert "checkpoint-dir: cannot write to" in _one_error_line(capsys)


class _FullDisk(io.RawIOBase):
    """A file on a disk that fills after `room` bytes (the error the kernel gives)."""

    def __init__(self, fh: Any, room: int) -> None:
        self.fh, self.room = fh, room

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.fh.write(b)

    def fileno(self) -> int:
        return self.fh.fileno()

    def close(self) -> None:
        self.fh.close()
        super().close()


def _fill_disk_after(monkeypatch: pytest.MonkeyPatch, room: int) -> None:
    real = os.fdopen

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        fh = real(fd, *args, **kwargs)
        if f".{checkpoint.NAME}." in os.readlink(f"/proc/self/fd/{fd}"):
            return _FullDisk(fh, room)
        return fh

    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.parametrize("room", [0, 100, 10_000])
def test_a_full_disk_keeps_the_last_checkpoint_and_says_so(room, tmp_path, monkeypatch) -> None:
    checkpoint.save(tmp_path, {"step": 1})
    _fill_disk_after(monkeypatch, room)
    with pytest.raises(checkpoint.WriteError, match=r"^checkpoint-dir: disk full writing "):
        checkpoint.save(tmp_path, {"step": 2, "w": torch.zeros(10_000)})
    monkeypatch.undo()
    assert checkpoint.load(tmp_path) == {"step": 1}
    assert not list(tmp_path.glob(".checkpoint*"))


def test_a_full_disk_exits_1_with_one_line(tmp_path, stats_cache, monkeypatch, capsys) -> None:
    _fill_disk_after(monkeypatch, 0)
    code = _main(stats_cache, "--checkpoint-dir", str(tmp_path / "ckpt"),
                 "--checkpoint-every", "1", "--max-steps", "2", "--eval-every", "2")
    assert code == 1
    out = capsys.readouterr()
    assert out.out == ""
    errors = [line for line in out.err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith(
        "critbatch-trainer: error: checkpoint-dir: disk full writing "), out.err


@pytest.mark.parametrize("group", [False, True])
def test_a_metrics_port_in_use_exits_2(group, stats_cache, capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        args = ["--metrics-port", port, "--metrics-host", "127.0.0.1"]
        if group:
            args = ["--trials", "16:0,4:1", *args]
            code = main([*COMMON, "--stats-cache", str(stats_cache), *args])
        else:
            code = _main(stats_cache, *args)
    assert code == 2
    assert _one_error_line(capsys).startswith(
        f"critbatch-trainer: error: metrics-port: cannot listen on 127.0.0.1:{port}: ")


def test_a_group_whose_checkpoint_dir_is_a_file_exits_2(tmp_path, stats_cache) -> None:
    afile, term = tmp_path / "afile", tmp_path / "term"
    afile.write_text("x")
    done = run_trainer("--trials", "16:0,4:1", *COMMON, "--stats-cache", str(stats_cache),
                       "--checkpoint-dir", str(afile), "--termination-log", str(term))
    assert done.returncode == 2, done.stderr
    lines = term.read_text().splitlines()
    assert [line.split(": exit code 2: critbatch-trainer: error: checkpoint-dir: ")[0]
            for line in lines] == ["trial b=16 seed=0", "trial b=4 seed=1"]
