"""`--reproducible-cpu`: the same FIDs whatever instruction sets the CPU offers.

Another CPU family is emulated on this one by capping what each library may use: ATen's
kernels (ATEN_CPU_CAPABILITY), oneDNN's (ONEDNN_MAX_CPU_ISA), MKL's branch (MKL_CBWR), glibc's
libm variants (no AVX2/FMA), NumPy's OpenBLAS core and SIMD loops.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from trainer_helpers import QUICK, trainer_cmd

from critbatch_trainer.__main__ import main
from critbatch_trainer.config import ConfigError, parse_args
from critbatch_trainer.loop import Trial
from critbatch_trainer.numerics import REPRODUCIBLE_ENV

pytestmark = pytest.mark.timeout(300)

_B = QUICK.index("--max-steps")
SHORT = [*QUICK[:_B], *QUICK[_B + 2:], "--max-steps", "60", "--gns-every", "0",
         "--termination-log", ""]
OLDER_CPU = {
    "ATEN_CPU_CAPABILITY": "default",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "MKL_CBWR": "SSE4_2",
    "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA",
    "OPENBLAS_CORETYPE": "Prescott",
    "NPY_DISABLE_CPU_FEATURES": "AVX2,FMA3,AVX512F,AVX512CD,AVX512_SKX",
}


def _curve(stats_cache, *extra: str, env: dict[str, str] | None = None) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in {*OLDER_CPU, *REPRODUCIBLE_ENV}}
    proc = subprocess.run(trainer_cmd(*SHORT, "--stats-cache", str(stats_cache), *extra),
                          capture_output=True, text=True, timeout=240,
                          env={**clean, "OMP_NUM_THREADS": "1", **(env or {})})
    assert proc.returncode == 0, proc.stderr
    fids = [line.split()[3] for line in proc.stderr.splitlines() if line.startswith("step ")]
    return {"result": json.loads(proc.stdout.strip().splitlines()[-1]), "fids": fids}


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() == "DEFAULT",
                    reason="torch already runs its portable kernels here: nothing to emulate")
def test_pinned_numerics_give_the_same_fids_on_an_emulated_older_cpu(stats_cache) -> None:
    native = _curve(stats_cache)
    older = _curve(stats_cache, env=OLDER_CPU)
    assert native["fids"] != older["fids"]  # the emulation does change unpinned numerics
    pinned = _curve(stats_cache, "--reproducible-cpu")
    pinned_older = _curve(stats_cache, "--reproducible-cpu", env=OLDER_CPU)
    assert pinned["fids"] == pinned_older["fids"] and len(pinned["fids"]) == 3
    strip = {"wall_seconds", "hardware"}
    assert {k: v for k, v in pinned["result"].items() if k not in strip} == {
        k: v for k, v in pinned_older["result"].items() if k not in strip}
    hw = pinned["result"]["hardware"]
    assert (hw["isa"], hw["reproducible"], hw["threads"]) == ("DEFAULT", True, 1)
    assert native["result"]["hardware"]["reproducible"] is False


def test_pinning_after_torch_is_imported_is_refused(capsys) -> None:
    code = main([*SHORT, "--reproducible-cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("critbatch-trainer: error: reproducible-cpu: torch was imported")


def test_a_group_pins_every_child(stats_cache) -> None:
    proc = subprocess.run(
        trainer_cmd("--trials", "8:0,4:1", "--fid-threshold", "1", "--max-steps", "2",
                    "--eval-every", "2", "--eval-samples", "64", "--gns-every", "0",
                    "--stats-cache", str(stats_cache), "--termination-log", "",
                    "--reproducible-cpu"),
        capture_output=True, text=True, timeout=240, env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.strip().splitlines()[-2:]]
    for r in results:
        assert r["hardware"]["isa"] == "DEFAULT" and r["hardware"]["reproducible"] is True
        assert r["hardware"]["threads"] == 1


def test_a_checkpoint_of_the_other_numerics_is_refused(stats_cache) -> None:
    cfg = parse_args([*SHORT, "--max-steps", "1", "--stats-cache", str(stats_cache)])
    trial = Trial.create(cfg, log=lambda _msg: None)
    state = trial.state_dict()
    state["identity"]["reproducible_cpu"] = True
    with pytest.raises(ConfigError, match="reproducible-cpu = True, this run has False"):
        trial.load_state_dict(state)
    del state["identity"]["reproducible_cpu"]  # a checkpoint without the flag: unpinned
    trial.load_state_dict(state)
