"""The `hardware` object of a trainer's result: reading it safely and summing it up."""

from __future__ import annotations

from critbatch.provenance import MAX_TEXT, hardware_fields, hardware_summary, short_text

CPU = {"device": "cpu", "cpu": "AMD EPYC 7763 64-Core", "isa": "DEFAULT",
       "torch": "2.14.1+cu130", "threads": 1, "reproducible": True}
GPU = {"device": "cuda", "cpu": "Intel Xeon Platinum 8480+", "isa": "AVX512",
       "gpu": "NVIDIA H200", "torch": "2.14.1+cu130", "threads": 16, "reproducible": False}


def test_model_names_lose_trademarks_clock_and_padding() -> None:
    assert short_text("Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz") == "Intel Xeon E5-2686 v4"
    assert short_text("AMD EPYC 7763 64-Core Processor") == "AMD EPYC 7763 64-Core"
    assert len(short_text("x" * 100)) == MAX_TEXT


def test_only_known_keys_with_short_well_typed_values_are_kept() -> None:
    assert hardware_fields(CPU) == CPU
    assert hardware_fields(GPU) == GPU
    hostile = {"device": "cpu", "cpu": "x" * (MAX_TEXT + 1), "isa": ["AVX2"], "gpu": None,
               "torch": "2.1\n", "threads": True, "reproducible": "yes", "extra": "dropped"}
    assert hardware_fields(hostile) == {"device": "cpu", "torch": "2.1"}
    assert hardware_fields({"threads": 10**9, "isa": "AVX2\x1b[2J"}) == {}
    assert hardware_fields("cpu") == hardware_fields(None) == hardware_fields([CPU]) == {}


def test_the_summary_names_what_decides_the_numerics() -> None:
    assert hardware_summary(CPU) == ("cpu AMD EPYC 7763 64-Core (DEFAULT), 1 thread, "
                                     "reproducible, torch 2.14.1+cu130")
    assert hardware_summary(GPU) == "cuda NVIDIA H200, torch 2.14.1+cu130"
    assert hardware_summary({**CPU, "threads": 4, "reproducible": False}) == (
        "cpu AMD EPYC 7763 64-Core (DEFAULT), 4 threads, torch 2.14.1+cu130")
    assert hardware_summary({"device": "cpu"}) == "cpu ?"
    assert hardware_summary(None) == hardware_summary({"cpu": 3}) == "unknown"
    assert hardware_summary(CPU) != hardware_summary({**CPU, "isa": "AVX2"})
