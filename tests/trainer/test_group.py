"""Several trials in one process group (`--trials`): results, metrics, failures and signals.

Real child trainers on the CPU with the quick digits settings: b=16 seed 0 reaches FID 500
within 200 steps and b=4 seed 1 is censored at 200, with wide margins (FID ~360 and ~1300 at
step 200). Which evaluation first crosses depends on the CPU's kernels (180 on some machines,
200 on others), so N is compared with a run on the same machine, never with a constant.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from loopback import free_port
from prometheus_client.parser import text_string_to_metric_families
from trainer_helpers import QUICK, trainer_cmd

from critbatch.metrics import scrape
from critbatch.vocabulary import TrialKey
from critbatch_trainer import checkpoint, group
from critbatch_trainer.__main__ import main
from critbatch_trainer.config import ConfigError, parse_args
from critbatch_trainer.loop import Trial
from critbatch_trainer.termination import (
    TERMINATION_LIMIT,
    termination_text,
    write_termination_log,
)

pytestmark = pytest.mark.timeout(180)

_B = QUICK.index("--batch-size")
BASE = [*QUICK[:_B], *QUICK[_B + 2:], "--max-steps", "200"]
TRIALS = "16:0,4:1"
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() or not path.read_text():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def grouped(tmp_path_factory, stats_cache):
    """Two trials in one group, its metrics scraped during the linger, ended by SIGTERM."""
    d = tmp_path_factory.mktemp("group")
    port, term = free_port(), d / "termination-log"
    args = [*BASE, "--trials", TRIALS, "--threads", "2", "--stats-cache", str(stats_cache),
            "--termination-log", str(term), "--metrics-port", str(port),
            "--metrics-host", "127.0.0.1", "--linger", "60", "--sweep", "packed"]
    proc = subprocess.Popen(trainer_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    try:
        _wait_for(term, proc)
        url = f"http://127.0.0.1:{port}/metrics"
        trials = scrape(url)
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        proc.send_signal(signal.SIGTERM)  # ends the linger
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return {"rc": proc.returncode, "out": out, "err": err, "term": term.read_text(),
            "trials": trials, "text": text}


def _alone(stats_cache: Path, batch_size: int, seed: int) -> dict:
    import torch

    cfg = parse_args([*BASE, "--batch-size", str(batch_size), "--seed", str(seed),
                      "--threads", "1", "--stats-cache", str(stats_cache),
                      "--termination-log", "", "--sweep", "packed"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return Trial.create(cfg, log=lambda _msg: None).run()
    finally:
        torch.set_num_threads(threads)


def test_group_writes_each_result_in_order_as_each_trial_alone(grouped, stats_cache) -> None:
    assert grouped["rc"] == 0, grouped["err"]
    lines = grouped["term"].splitlines()
    assert len(grouped["term"].encode()) < 4096
    assert grouped["out"].strip().splitlines()[-2:] == lines
    results = [json.loads(line) for line in lines]
    assert [(r["batch_size"], r["seed"]) for r in results] == [(16, 0), (4, 1)]
    assert [r["reached"] for r in results] == [True, False]
    assert results[1]["steps"] == 200
    for r in results:  # on the CPU a seed fixes the run, whatever shares the machine
        alone = _alone(stats_cache, r["batch_size"], r["seed"])
        assert {k: v for k, v in r.items() if k != "wall_seconds"} == {
            k: v for k, v in alone.items() if k != "wall_seconds"}
    assert "[b=16 s=0] step 20 fid" in grouped["err"]
    assert "[b=4 s=1] step 20 fid" in grouped["err"]


def test_parent_serves_both_trials_metrics(grouped) -> None:
    trials = grouped["trials"]
    assert set(trials) == {(16, 0), (4, 1)}
    done, censored = trials[(16, 0)], trials[(4, 1)]
    n = json.loads(grouped["term"].splitlines()[0])["steps"]
    assert 0 < n <= 200 and n % 20 == 0
    assert (done.step, done.reached, done.finished, done.steps_to_threshold) == (
        n, True, True, n)
    assert (censored.step, censored.reached, censored.finished) == (200, False, True)
    assert done.max_steps == censored.max_steps == 200
    samples = {}
    for family in text_string_to_metric_families(grouped["text"]):
        for s in family.samples:
            assert "pid" not in s.labels
            if s.name.startswith("critbatch_trainer_"):
                assert s.labels["sweep"] == "packed"
            samples[(s.name, s.labels.get("batch_size"), s.labels.get("network"))] = s.value
    assert samples[("critbatch_trainer_samples_total", "16", None)] == n * 16
    assert samples[("critbatch_trainer_step_duration_seconds_count", "4", None)] == 200
    assert samples[("critbatch_trainer_loss", "4", "generator")] > 0


@pytest.mark.parametrize("value,message", [
    ("16:x", "trials: '16:x': seed must be an integer"),
    ("16", "trials: '16' is not batch_size:seed"),
    ("0:1", "trials: '0:1': batch size must be an integer >= 1"),
    ("16:0,16:0", "trials: '16:0' is given twice"),
    (",".join(f"{b}:0" for b in range(1, 10)), "trials: at most 8 pairs, got 9"),
    ("", "trials: expected batch_size:seed"),
])
def test_bad_trials_exit_2_naming_the_field(value, message, capsys) -> None:
    assert main([*BASE, "--trials", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"critbatch-trainer: error: {message}") and err.count("\n") == 1


def test_trials_with_batch_size_or_a_bad_flag_exits_2_before_starting_anything() -> None:
    for extra, message in ((["--batch-size", "8"], "trials: cannot be combined with "
                                                   "--batch-size"),
                           (["--seed", "3"], "trials: cannot be combined with --seed"),
                           (["--max-steps", "x"], "max-steps: must be an integer")):
        proc = subprocess.run(trainer_cmd(*BASE, "--trials", TRIALS, *extra),
                              capture_output=True, text=True, timeout=60, env=ENV)
        assert proc.returncode == 2
        assert proc.stderr.startswith(f"critbatch-trainer: error: {message}")
        assert proc.stderr.count("\n") == 1 and proc.stdout == ""


def test_child_command_line_overrides_what_each_child_must_own(tmp_path) -> None:
    assert group.split_trials(["--seed-x", "--trials=8:0,16:1", "--linger", "5"]) == (
        "8:0,16:1", ["--seed-x", "--linger", "5"])
    assert group.split_trials(["--batch-size", "8"]) is None
    with pytest.raises(ConfigError, match="trials: given more than once"):
        group.split_trials(["--trials", "8:0", "--trials", "4:0"])
    cfg = parse_args([*BASE, "--batch-size", "8", "--checkpoint-dir", str(tmp_path),
                      "--metrics-port", "9000", "--linger", "30", "--termination-log", ""])
    key = group.group_keys("8:0, 16:3")[1]
    assert key == TrialKey(16, 3)
    argv = group.child_argv(["--x"], key, cfg=cfg, result_file=tmp_path / "r", threads=3)
    assert argv[:4] == [sys.executable, "-m", "critbatch_trainer", "--x"]
    assert argv[4:] == ["--batch-size", "16", "--seed", "3", "--metrics-port", "0", "--linger",
                        "0", "--termination-log", str(tmp_path / "r"), "--checkpoint-dir",
                        str(tmp_path / "b16-s3"), "--threads", "3"]


def test_termination_text_stays_under_4_kib_with_the_failure_last() -> None:
    result = json.dumps({"sweep": "s" * 60, "batch_size": 1024, "seed": 7, "pad": "x" * 300})
    failure = "trial b=8 seed=1: exit code 1: " + "e" * 400
    text = termination_text([result] * 7, [failure[:group.FAILURE_CHARS]])
    assert len(text.encode()) <= TERMINATION_LIMIT
    assert text.splitlines()[-1].startswith("trial b=8 seed=1: exit code 1: ")
    assert termination_text([], []) == ""


def test_eight_results_that_would_not_fit_lose_their_hardware_not_their_numbers() -> None:
    hardware = {"device": "cuda", "cpu": "c" * 40, "isa": "AVX512", "gpu": "g" * 40,
                "torch": "t" * 40, "threads": 4096, "reproducible": False}
    results = [json.dumps({"sweep": "s" * 63, "batch_size": 1024 + i, "seed": 7,
                           "reached": False, "steps": 10**6, "interpolated_steps": 123456.789,
                           "sfo": 10**9, "fid": 123456.123456, "threshold": 12.5,
                           "max_steps": 10**6, "wall_seconds": 123456.789,
                           "generator_params": 70433988, "dataset_size": 1281167,
                           "gradient_noise_scale": 12345.678, "hardware": hardware},
                          separators=(",", ":")) for i in range(8)]
    text = termination_text(results, ["trial b=1 seed=0: exit code 1: boom"])
    assert len(text.encode()) <= TERMINATION_LIMIT
    lines = text.splitlines()
    assert [json.loads(line) for line in lines[:8]] == [
        {k: v for k, v in json.loads(r).items() if k != "hardware"} for r in results]
    few = results[:4]
    assert termination_text(few, []).splitlines() == few


def test_eight_results_of_a_sweep_with_the_longest_name_still_all_fit() -> None:
    """A sweep's name may have 253 characters: eight lines shed it (the reader knows it)
    rather than lose a trial's result."""
    row = {"sweep": "s" * 253, "reached": True, "steps": 10**6,
           "interpolated_steps": 999999.123456, "sfo": 10**12, "fid": 123456.123456,
           "threshold": 12.5, "max_steps": 10**6, "wall_seconds": 123456.789,
           "generator_params": 70433988, "dataset_size": 1281167,
           "gradient_noise_scale": 12345.678}
    results = [json.dumps({**row, "batch_size": 1 << 20, "seed": 24 + i}, separators=(",", ":"))
               for i in range(8)]
    assert sum(len(r) + 1 for r in results) > TERMINATION_LIMIT
    lines = termination_text(results, ["trial b=1 seed=0: exit code 1: boom"]).splitlines()
    assert sum(len(line.encode()) + 1 for line in lines) <= TERMINATION_LIMIT + 1
    kept = [json.loads(line) for line in lines[:8]]
    assert [(r["batch_size"], r["seed"]) for r in kept] == [(1 << 20, 24 + i) for i in range(8)]
    for r in kept:
        assert "sweep" not in r and r["reached"] is True and r["steps"] == 10**6
        assert (r["fid"], r["generator_params"], r["dataset_size"]) == (123456.123456,
                                                                        70433988, 1281167)
    assert lines[-1] == "trial b=1 seed=0: exit code 1: boom"


def test_one_writer_cuts_to_the_limit_and_only_warns_when_it_cannot_write(tmp_path,
                                                                         capsys) -> None:
    path = tmp_path / "term"
    write_termination_log(str(path), "é" * 3000)  # 6000 bytes
    assert len(path.read_bytes()) <= TERMINATION_LIMIT and set(path.read_text()) == {"é"}
    write_termination_log(str(path), "")
    write_termination_log(None, "x")
    assert set(path.read_text()) == {"é"}
    write_termination_log(str(tmp_path / "no" / "such" / "dir"), "x")
    assert capsys.readouterr().err.startswith(
        "critbatch-trainer: warning: cannot write termination log ")


def test_a_crashing_child_leaves_the_other_to_finish_and_exits_1(tmp_path, stats_cache) -> None:
    ckpt, term = tmp_path / "ckpt", tmp_path / "term"
    ckpt.mkdir()
    (ckpt / "b8-s1").write_text("a file where the checkpoint directory should be")
    proc = subprocess.run(trainer_cmd(*BASE, "--trials", "16:0,8:1", "--checkpoint-dir",
                                      str(ckpt), "--checkpoint-every", "20", "--stats-cache",
                                      str(stats_cache), "--termination-log", str(term)),
                          capture_output=True, text=True, timeout=150, env=ENV)
    assert proc.returncode == 1, proc.stderr
    lines = term.read_text().splitlines()
    assert len(lines) == 2
    done = json.loads(lines[0])
    assert done["reached"] and 0 < done["steps"] <= 200 and done["steps"] % 20 == 0
    assert lines[1].startswith(
        "trial b=8 seed=1: exit code 2: critbatch-trainer: error: checkpoint-dir: ")
    err = proc.stderr
    assert err.index("[b=8 s=1] critbatch-trainer: error: checkpoint-dir") < err.index(
        f"[b=16 s=0] step {done['steps']} fid")
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == done
    assert checkpoint.load(ckpt / "b16-s0")["step"] == done["steps"]


def test_sigterm_reaches_every_child_which_checkpoints_then_exits_143(tmp_path,
                                                                     stats_cache) -> None:
    ckpt, term = tmp_path / "ckpt", tmp_path / "term"
    code = ("import sys; from critbatch_trainer.__main__ import main; rc = main(); "
            "print('parent imported torch' if 'torch' in sys.modules else '', file=sys.stderr);"
            " sys.exit(rc)")
    args = [*BASE, "--trials", TRIALS, "--fid-threshold", "1", "--max-steps", "5000",
            "--checkpoint-dir", str(ckpt), "--stats-cache", str(stats_cache),
            "--termination-log", str(term)]
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 120
        while not all(f"[{t}] step 20 fid" in "".join(seen) for t in ("b=16 s=0", "b=4 s=1")):
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "the group ended early"
            assert time.monotonic() < deadline
            seen.append(line)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert out.strip() == "" and not term.exists()
    assert "parent imported torch" not in err
    for d in ("b16-s0", "b4-s1"):
        assert checkpoint.load(ckpt / d)["step"] >= 20
    assert err.count("stopped by signal at step") == 2
