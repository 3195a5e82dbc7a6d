"""Specification of the `critbatch` command line: JSON shapes, tables, and exit code 2 with
one line naming the field for every kind of bad input."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from critbatch import cli
from critbatch.commands import COMMANDS

REFERENCE = "optimizer=adam,lr=1e-4,beta1=0.5,beta2=0.999,batch=32"
DCGAN = ["--params", "3576704", "--dataset-size", "3033042"]
# 1/N = p + q/b with p = 1/1000, q = -32/1000: b* = 64, N_min = 1000 steps.
MODEL = {b: 1000.0 * b / (b - 32) for b in (64, 128, 256, 512, 1024)}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv: str) -> dict:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def cell(row: int, column: str) -> str:
    """The regex for a message naming a file's data row and column."""
    return rf"^critbatch: error: .*: row {row}\b.*, column {column}:"


def assert_bad_input(capsys, argv: list[str], field: str) -> str:
    """Exit code 2 and one line on stderr containing `field` (a regex when it starts with ^)."""
    code, _, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("critbatch")
    assert "error:" in lines[0]
    assert re.search(field, lines[0]) if field.startswith("^") else field in lines[0], lines[0]
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------------------------------------
# estimate
# ---------------------------------------------------------------------------------------------


def test_estimate_json_shape_and_order(capsys) -> None:
    got = run_json(capsys, "estimate", "--reference", REFERENCE, *DCGAN,
                   "--target", "optimizer=rmsprop,lr=1e-4",
                   "--target", "optimizer=adabelief,lr=3e-4",
                   "--target", "optimizer=adam,lr=2e-4")
    assert set(got) >= {"noise_ratio", "estimates"}
    assert isinstance(got["noise_ratio"], float) and got["noise_ratio"] > 0
    assert [e["optimizer"] for e in got["estimates"]] == ["rmsprop", "adabelief", "adam"]
    for e in got["estimates"]:
        assert isinstance(e["batch_size"], float)
        assert isinstance(e["grid_batch_size"], int)
        assert e["grid_batch_size"] in [2**k for k in range(17)]
    rms, adabelief, adam = got["estimates"]
    assert rms["batch_size"] == pytest.approx(32 * 0.125 * math.sqrt(1000))  # by hand
    assert rms["grid_batch_size"] == 128
    assert adabelief["batch_size"] == pytest.approx(48)
    assert adam["batch_size"] == pytest.approx(64)  # twice the reference's learning rate


def test_estimate_targets_default_to_the_references_settings(capsys) -> None:
    got = run_json(capsys, "estimate", "--reference",
                   "optimizer=adam,lr=1e-4,beta1=0.6,beta2=0.99,batch=32", *DCGAN,
                   "--target", "optimizer=adabelief,lr=1e-4",
                   "--target", "optimizer=adam,lr=1e-4,dataset_size=6066084,beta1=0.5")
    first, second = got["estimates"]
    assert (first["beta1"], first["beta2"]) == (0.6, 0.99)
    assert (first["params"], first["dataset_size"]) == (3576704, 3033042)
    assert first["batch_size"] == pytest.approx(16)  # AdaBelief: half of Adam's 32
    assert second["dataset_size"] == 6066084 and second["beta1"] == 0.5
    # Twice the data doubles the estimate; beta1 0.5 instead of 0.6: (0.4/0.5)^3 of D's ratio.
    assert second["batch_size"] == pytest.approx(2 * 32 * (0.4 / 0.5) ** 3)


def test_estimate_grid(capsys) -> None:
    far = run_json(capsys, "estimate", "--reference", REFERENCE, *DCGAN,
                   "--target", "optimizer=adam,lr=1")
    assert far["estimates"][0]["batch_size"] == pytest.approx(320000)
    assert far["estimates"][0]["grid_batch_size"] == 65536  # the default grid's top
    custom = run_json(capsys, "estimate", "--reference", REFERENCE, *DCGAN,
                      "--target", "optimizer=adam,lr=1.5e-4", "--grid", "30,50,100")
    assert custom["estimates"][0]["grid_batch_size"] == 50  # 48 is nearest to 50


def test_estimate_without_targets_gives_the_noise_ratio(capsys) -> None:
    got = run_json(capsys, "estimate", "--reference", REFERENCE, *DCGAN)
    assert got["estimates"] == []
    d_adam = 0.125 * math.sqrt(3576704 / 0.001) / 3033042
    assert got["noise_ratio"] == pytest.approx(32 * d_adam / 1e-4)


def test_an_interval_of_the_reference_b_star_carries_over_to_each_estimate(capsys) -> None:
    """Proposition 3.4 is linear in the reference's b*: an interval of it (e.g. its fitted
    credible interval) maps to each estimate's interval, widened to hold the measured b*."""
    got = run_json(capsys, "estimate", "--reference", REFERENCE + ",low=24,high=45", *DCGAN,
                   "--target", "optimizer=rmsprop,lr=1e-4")
    (rms,) = got["estimates"]
    assert got["reference"]["batch_size_interval"] == [24, 45]
    assert got["noise_ratio_interval"] == pytest.approx(
        [got["noise_ratio"] * 24 / 32, got["noise_ratio"] * 45 / 32])
    assert rms["batch_size_interval"] == pytest.approx(
        [rms["batch_size"] * 24 / 32, rms["batch_size"] * 45 / 32])
    widened = run_json(capsys, "estimate", "--reference", REFERENCE + ",low=20,high=28",
                       *DCGAN, "--target", "optimizer=rmsprop,lr=1e-4")
    assert widened["reference"]["batch_size_interval"] == [20, 32]
    assert widened["estimates"][0]["batch_size_interval"][1] == pytest.approx(rms["batch_size"])
    plain = run_json(capsys, "estimate", "--reference", REFERENCE, *DCGAN,
                     "--target", "optimizer=rmsprop,lr=1e-4")
    assert plain["noise_ratio_interval"] is None
    assert plain["estimates"][0]["batch_size_interval"] is None
    code, out, err = run(capsys, "estimate", "--reference", REFERENCE + ",low=24,high=45",
                         *DCGAN, "--target", "optimizer=rmsprop,lr=1e-4")
    assert code == 0, err
    assert "measured b* = 32 [24, 45]" in out and "788.72 [591.5, 1109]" in out


def test_estimate_table(capsys) -> None:
    code, out, err = run(capsys, "estimate", "--reference", REFERENCE, *DCGAN,
                         "--target", "optimizer=rmsprop,lr=1e-4")
    assert code == 0, err
    assert "rmsprop" in out and "126.5" in out and "128" in out
    assert "noise ratio" in out


@pytest.mark.parametrize(
    ("reference", "extra", "field"),
    [
        ("optimizer=sgd,lr=1e-4,batch=32", [], "--reference.optimizer"),
        (REFERENCE, ["--target", "optimizer=lion,lr=1e-4"], "--target[0].optimizer"),
        ("optimizer=adam,lr=1e-4,beta1=1.0,batch=32", [], "--reference.beta1"),
        (REFERENCE, ["--target", "optimizer=adam,lr=1e-4",
                     "--target", "optimizer=adam,lr=1e-4,beta1=1.5"], "--target[1].beta1"),
        ("optimizer=adam,lr=0,batch=32", [], "--reference.lr"),
        (REFERENCE, ["--target", "optimizer=adam,lr=-1e-4"], "--target[0].lr"),
        ("optimizer=adam,lr=nan,batch=32", [], "--reference.lr"),
        ("optimizer=adam,lr=1e-4,batch=0", [], "--reference.batch"),
        ("optimizer=adam,lr=1e-4,batch=-8", [], "--reference.batch"),
        ("optimizer=adam,lr=1e-4,batch=nan", [], "--reference.batch"),
        ("optimizer=adam,lr=1e-4", [], "--reference.batch"),
        ("optimizer=adam,batch=32", [], "--reference.lr"),
        ("optimizer=adam,lr=1e-4,batch=32,params=5", [], "--reference.params"),
        (REFERENCE, ["--target", "optimizer=adam,lr=1e-4,batch=3"], "--target[0].batch"),
        (REFERENCE, ["--target", "optimizer=adam,lr=1e-4,params=0"], "--target[0].params"),
        (REFERENCE, ["--target", "optimizer=adam,lr=1e-4,dataset_size=x"],
         "--target[0].dataset_size"),
        (REFERENCE, ["--target", "optimizer=adam,lr"], "--target[0]"),
        (REFERENCE, ["--target", "optimizer=adam,lr=1,lr=2"], "--target[0].lr"),
        (REFERENCE + ",low=24", [], "--reference.high: required with --reference.low"),
        (REFERENCE + ",high=40", [], "--reference.low: required with --reference.high"),
        (REFERENCE + ",low=40,high=30", [], "--reference.low: must be <= high"),
        (REFERENCE + ",low=0,high=30", [], "--reference.low: must be > 0"),
        (REFERENCE + ",low=20,high=inf", [], "--reference.high"),
        (REFERENCE + ",low=20,high=1e308", [], "--reference: the noise ratio"),
        (REFERENCE, ["--grid", "1,two,4"], "--grid"),
        (REFERENCE, ["--grid", "0,4"], "--grid"),
    ],
)
def test_estimate_bad_input_exits_2_naming_the_field(capsys, reference, extra, field) -> None:
    assert_bad_input(capsys, ["estimate", "--reference", reference, *DCGAN, *extra], field)


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--params", "0", "--dataset-size", "10"], "--params"),
        (["--params", "3.5", "--dataset-size", "10"], "--params"),
        (["--params", "nan", "--dataset-size", "10"], "--params"),
        (["--params", "10", "--dataset-size", "-1"], "--dataset-size"),
        (["--dataset-size", "10"], "--params"),  # missing: argparse's own error, one line
    ],
)
def test_estimate_bad_counts_exit_2(capsys, argv: list[str], field: str) -> None:
    assert_bad_input(capsys, ["estimate", "--reference", REFERENCE, *argv], field)


@pytest.mark.parametrize(
    ("target", "grid", "warning"),
    [
        ("optimizer=adam,lr=10", 65536, "--target[0]: the estimate 3200000 is above the grid's "
         "largest batch size 65536: its grid b* is clamped to 65536"),
        ("optimizer=adam,lr=1e306", 65536, "--target[0]: the estimate overflows (infinite): its "
         "grid b* is clamped to 65536"),
        ("optimizer=rmsprop,lr=1e-9", 1, "--target[0]: the estimate 0.001265 is below the "
         "grid's smallest batch size 1: its grid b* is clamped to 1"),
    ],
)
def test_estimate_beyond_the_grid_is_clamped_with_a_warning(capsys, target, grid, warning):
    got = run_json(capsys, "estimate", "--reference", REFERENCE, *DCGAN, "--target", target)
    assert got["estimates"][0]["grid_batch_size"] == grid
    assert got["warnings"] == [warning]
    code, out, _ = run(capsys, "estimate", "--reference", REFERENCE, *DCGAN, "--target", target)
    assert code == 0 and f"warning: {warning}" in out.replace("\n", "")


def test_estimate_within_the_grid_has_no_warning(capsys):
    got = run_json(capsys, "estimate", "--reference", REFERENCE, *DCGAN, "--target",
                   "optimizer=adam,lr=1e-4")
    assert got["warnings"] == []


def test_estimate_an_overflowing_noise_ratio_is_exit_2(capsys):
    assert_bad_input(capsys, ["estimate", "--reference",
                              "optimizer=adam,lr=1e-300,batch=1e300", *DCGAN,
                              "--target", "optimizer=adam,lr=1e-4"],
                     "--reference: the noise ratio sigma^2/eps^3 overflows")


# ---------------------------------------------------------------------------------------------
# analyze
# ---------------------------------------------------------------------------------------------


def _rows(seeds: int = 3, censored: tuple[int, ...] = (32,)) -> list[dict]:
    rows = []
    for seed in range(seeds):
        for b in censored:
            rows.append({"batch_size": b, "steps": 20000, "reached": False, "seed": seed})
        for b, n in MODEL.items():
            # A deterministic +-2% spread around the model, different per seed.
            rows.append({"batch_size": b, "steps": round(n * (1 + 0.02 * (seed - 1)), 3),
                         "reached": True, "seed": seed})
    return rows


def write_csv(path: Path, rows: list[dict], columns: tuple[str, ...] | None = None) -> Path:
    columns = columns or tuple(rows[0])
    lines = [",".join(columns)]
    lines += [",".join(str(r[c]).lower() if isinstance(r[c], bool) else str(r[c])
                       for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_analyze_json_shape(tmp_path, capsys) -> None:
    got = run_json(capsys, "analyze", str(write_csv(tmp_path / "r.csv", _rows())))
    assert set(got) >= {"most_probable_batch_size", "plausible_batch_sizes",
                        "argmin_probabilities", "resolved", "reach_fraction", "confidence",
                        "budget", "measured_batch_size", "fitted_batch_size", "fitted_interval",
                        "n_min", "sfo", "censored", "warnings"}
    # SFO = N(b)*b = 1000 b^2/(b - 32): least at 64 on this grid.
    assert got["most_probable_batch_size"] == 64 and 64 in got["plausible_batch_sizes"]
    assert got["resolved"] == (got["plausible_batch_sizes"] == [64])
    assert set(got["argmin_probabilities"]) == {"32", *map(str, MODEL)}
    assert sum(got["argmin_probabilities"].values()) == pytest.approx(1.0)
    assert got["reach_fraction"] == {"32": 0.0, **{str(b): 1.0 for b in MODEL}}
    assert got["measured_batch_size"] == 64
    assert got["fitted_batch_size"] == pytest.approx(64, rel=0.05)
    lo, hi = got["fitted_interval"]
    assert lo < got["fitted_batch_size"] < hi
    assert got["n_min"] == pytest.approx(1000, rel=0.05)
    assert [p["batch_size"] for p in got["sfo"]] == sorted(MODEL)
    for p in got["sfo"]:
        assert set(p) >= {"batch_size", "steps", "sfo"}
        assert p["steps"] == pytest.approx(MODEL[p["batch_size"]])  # the seeds' +-2% cancel
        assert p["sfo"] == pytest.approx(p["steps"] * p["batch_size"])
    assert got["censored"] == [32]
    assert got["budget"] == 20000  # the longest trial, when --budget is not given


def test_analyze_budget_is_what_a_stalled_seed_costs(tmp_path, capsys) -> None:
    """One seed of two stalled at b = 64, the model's argmin: the longer a run it wasted, the
    less probable 64 is."""
    rows = [{"batch_size": b, "steps": n, "reached": True, "seed": 0} for b, n in MODEL.items()]
    rows.append({"batch_size": 64, "steps": 3000, "reached": False, "seed": 1})
    path = str(write_csv(tmp_path / "r.csv", rows))
    cheap = run_json(capsys, "analyze", path, "--budget", "3000")
    dear = run_json(capsys, "analyze", path, "--budget", "60000")
    assert cheap["budget"] == 3000 and dear["budget"] == 60000
    assert dear["argmin_probabilities"]["64"] < cheap["argmin_probabilities"]["64"]
    assert any("stalls as a run of 3000 steps" in w for w in cheap["warnings"])


def test_analyze_plausible_set_follows_the_confidence(tmp_path, capsys) -> None:
    path = str(write_csv(tmp_path / "r.csv", _rows(seeds=1)))
    loose = run_json(capsys, "analyze", path, "--confidence", "0.6")
    strict = run_json(capsys, "analyze", path, "--confidence", "0.999")
    assert set(loose["plausible_batch_sizes"]) <= set(strict["plausible_batch_sizes"])
    assert loose["plausible_batch_sizes"] == sorted(loose["plausible_batch_sizes"])
    held = sum(strict["argmin_probabilities"][str(b)] for b in strict["plausible_batch_sizes"])
    assert held >= 0.999 - 1e-9


def test_analyze_reads_csv_json_yaml_jsonl_and_stdin_alike(tmp_path, capsys, monkeypatch) -> None:
    rows = _rows()
    csv_path = write_csv(tmp_path / "r.csv", rows)
    (tmp_path / "r.json").write_text(json.dumps(rows))
    (tmp_path / "wrapped.json").write_text(json.dumps({"trials": rows}))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(rows))
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    results = [run_json(capsys, "analyze", str(tmp_path / name))
               for name in ("r.csv", "r.json", "wrapped.json", "r.yaml", "r.jsonl")]
    monkeypatch.setattr(sys, "stdin", io.StringIO(csv_path.read_text()))
    results.append(run_json(capsys, "analyze", "-"))
    assert all(r == results[0] for r in results[1:])


def test_analyze_reads_a_spreadsheets_csv_with_byte_order_mark(tmp_path, capsys) -> None:
    path = write_csv(tmp_path / "r.csv", _rows())
    plain = run_json(capsys, "analyze", str(path))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert run_json(capsys, "analyze", str(path)) == plain


def test_analyze_seed_is_optional_and_extra_columns_are_ignored(tmp_path, capsys) -> None:
    rows = [{**r, "fid": 42.0, "sfo": 0} for r in _rows(seeds=1)]
    path = write_csv(tmp_path / "r.csv", rows, ("batch_size", "fid", "steps", "reached", "sfo"))
    got = run_json(capsys, "analyze", str(path))
    assert got["most_probable_batch_size"] == 64 and got["measured_batch_size"] == 64
    lo, hi = got["fitted_interval"]  # one seed per batch size still has an interval
    assert lo < got["fitted_batch_size"] < hi


def test_analyze_not_identifiable_gives_no_number_and_a_reason(tmp_path, capsys) -> None:
    rows = [{"batch_size": b, "steps": 10 * b, "reached": True} for b in (8, 16, 32, 64)]
    got = run_json(capsys, "analyze", str(write_csv(tmp_path / "r.csv", rows)))
    assert got["fitted_batch_size"] is None
    assert got["fitted_interval"] is None and got["n_min"] is None
    assert any(w.startswith("fit:") and "does not hold" in w for w in got["warnings"])
    assert got["measured_batch_size"] == 8


def test_analyze_table(tmp_path, capsys) -> None:
    code, out, err = run(capsys, "analyze", str(write_csv(tmp_path / "r.csv", _rows())))
    assert code == 0, err
    assert out.startswith("b*: 64 (probability ")
    assert "fitted b*" in out and "credible interval" in out
    assert "censored >= 20000" in out and "min mean SFO" in out


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r[2].update(steps="nan"), cell(3, "steps")),
        (lambda r: r[3].update(steps="abc"), cell(4, "steps")),
        (lambda r: r[0].update(batch_size=0), cell(1, "batch_size")),
        (lambda r: r[1].update(batch_size=-64), cell(2, "batch_size")),
        (lambda r: r[1].update(batch_size=64.5), cell(2, "batch_size")),
        (lambda r: r[4].update(reached="maybe"), cell(5, "reached")),
        (lambda r: r[4].update(steps=0), cell(5, "steps")),
        (lambda r: r[5].update(seed="x"), cell(6, "seed")),
        (lambda r: r[5].update(steps=""), cell(6, "steps")),
    ],
)
def test_analyze_bad_cell_names_row_and_column(tmp_path, capsys, mutate, field) -> None:
    rows = _rows(seeds=1)
    mutate(rows)
    line = assert_bad_input(capsys, ["analyze", str(write_csv(tmp_path / "r.csv", rows))],
                            field)
    assert "r.csv" in line


def test_analyze_bad_json_row_names_row_and_column(tmp_path, capsys) -> None:
    rows = _rows(seeds=1)
    del rows[2]["reached"]
    (tmp_path / "r.json").write_text(json.dumps(rows).replace('"steps": 20000', '"steps": NaN'))
    assert_bad_input(capsys, ["analyze", str(tmp_path / "r.json")], cell(1, "steps"))
    (tmp_path / "r.json").write_text(json.dumps(rows))
    assert_bad_input(capsys, ["analyze", str(tmp_path / "r.json")], cell(3, "reached"))


def test_analyze_missing_column(tmp_path, capsys) -> None:
    path = write_csv(tmp_path / "r.csv", _rows(), ("batch_size", "reached", "seed"))
    assert_bad_input(capsys, ["analyze", str(path)], "column steps")


@pytest.mark.parametrize(
    ("name", "text", "field"),
    [
        ("empty.csv", "", "empty"),
        ("header.csv", "batch_size,steps,reached\n", "no trials"),
        ("bad.json", "[{\"batch_size\": 1,", "not valid JSON"),
        ("bad.yaml", "- {batch_size: 1\n", "not valid YAML"),
        ("scalar.yaml", "42\n", "expected a list"),
        ("list.yaml", "- 42\n", "row 1"),
    ],
)
def test_analyze_malformed_files(tmp_path, capsys, name, text, field) -> None:
    (tmp_path / name).write_text(text)
    assert_bad_input(capsys, ["analyze", str(tmp_path / name)], field)


def test_analyze_refuses_a_trial_given_twice_naming_both_rows(tmp_path, capsys) -> None:
    path = tmp_path / "r.csv"
    path.write_text("batch_size,steps,reached,seed\n16,100,true,0\n32,50,true,0\n"
                    "16,120,true,0\n")
    line = assert_bad_input(capsys, ["analyze", str(path)], "row 1 (line 2) and row 3 (line 4) "
                            "are both batch_size 16, seed 0: each trial must appear once")
    assert "add a seed column" not in line


def test_analyze_rows_without_a_seed_are_seed_0_and_the_message_says_so(tmp_path, capsys):
    path = tmp_path / "r.csv"
    path.write_text("batch_size,steps,reached\n16,100,true\n32,50,true\n16,120,true\n")
    assert_bad_input(capsys, ["analyze", str(path)], "add a seed column")
    rows = [{"batch_size": 16, "steps": 1, "reached": True},
            {"batch_size": 16, "steps": 2, "reached": True, "seed": 0}]
    (tmp_path / "r.json").write_text(json.dumps(rows))
    assert_bad_input(capsys, ["analyze", str(tmp_path / "r.json")],
                     "row 1 and row 2 are both batch_size 16, seed 0")


@pytest.mark.parametrize(
    ("name", "content", "field"),
    [
        ("deep.json", b"[" * 100_000, "deep.json: nested too deeply"),
        ("deep.yaml", b"[" * 100_000, "deep.yaml: nested too deeply"),
        ("deep.jsonl", b'{"a": 1}\n' + b"[" * 100_000, "not valid JSON at line 2"),
        ("huge.json", b'[{"batch_size": 1' + b"0" * 400 + b', "steps": 1, "reached": true}]',
         "column batch_size: too large"),
        ("big.csv", b"batch_size,steps,reached\n100000000000000,10,true\n",
         "column batch_size: must be in 1..1048576"),
        ("latin1.csv", "batch_size,steps,reached,note\n16,10,true,caf\xe9\n".encode("latin-1"),
         "RESULTS: {path} is not UTF-8 text"),
        ("dir", None, "RESULTS: {path} is a directory"),
    ],
)
def test_analyze_hostile_files_exit_2(tmp_path, capsys, name, content, field) -> None:
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    assert_bad_input(capsys, ["analyze", str(path)], field.format(path=path))


def test_analyze_caps_what_it_reads(tmp_path, capsys, monkeypatch) -> None:
    from critbatch.commands import analyze

    monkeypatch.setattr(analyze, "MAX_BYTES", 100)
    path = write_csv(tmp_path / "r.csv", _rows())
    assert_bad_input(capsys, ["analyze", str(path)], f"RESULTS: {path} is larger than 0 KiB")
    monkeypatch.setattr(sys, "stdin", io.StringIO(path.read_text()))
    assert_bad_input(capsys, ["analyze", "-"], "<stdin>: larger than 0 MiB")


def test_analyze_non_utf8_stdin_exit_2(capsys, monkeypatch) -> None:
    class Stdin(io.StringIO):
        buffer = io.BytesIO(b"batch_size,steps,reached\n\xff,1,true\n")

    monkeypatch.setattr(sys, "stdin", Stdin())
    assert_bad_input(capsys, ["analyze", "-"], "<stdin>: not UTF-8 text")


def test_analyze_missing_file(tmp_path, capsys) -> None:
    line = assert_bad_input(capsys, ["analyze", str(tmp_path / "nope.csv")], "RESULTS")
    assert "nope.csv" in line


@pytest.mark.parametrize(
    ("flag", "value"), [("--eval-every", "-1"), ("--eval-every", "inf"), ("--confidence", "1.5"),
                        ("--confidence", "0.5"), ("--budget", "0"), ("--budget", "nan")])
def test_analyze_bad_options(tmp_path, capsys, flag, value) -> None:
    path = write_csv(tmp_path / "r.csv", _rows())
    assert_bad_input(capsys, ["analyze", str(path), flag, value], flag)


# ---------------------------------------------------------------------------------------------
# The CLI shell
# ---------------------------------------------------------------------------------------------


def test_no_command_prints_help_and_exits_2(capsys) -> None:
    code, _, err = run(capsys)
    assert code == 2
    assert "estimate" in err and "analyze" in err


def test_help_and_version_exit_0(capsys) -> None:
    assert cli.main(["--help"]) == 0
    assert "analyze" in capsys.readouterr().out
    assert cli.main(["analyze", "--help"]) == 0
    assert "seed is optional (default 0)" in capsys.readouterr().out.replace("\n", " ")
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("critbatch ")


def test_unknown_command_is_a_one_line_usage_error(capsys) -> None:
    assert_bad_input(capsys, ["frobnicate"], "frobnicate")


def test_the_parser_has_exactly_the_registered_commands_in_order() -> None:
    choices = cli.build_parser()._subparsers._group_actions[0].choices
    assert list(choices) == list(COMMANDS) == ["estimate", "analyze", "run", "report",
                                               "check-trainer"]
    assert all(module == f"critbatch.commands.{name.replace('-', '_')}"
               for name, module in COMMANDS.items())


def test_a_registered_command_without_its_module_is_an_import_error(monkeypatch) -> None:
    monkeypatch.setitem(COMMANDS, "frobnicate", "critbatch.commands.frobnicate")
    with pytest.raises(ModuleNotFoundError, match=r"critbatch\.commands\.frobnicate"):
        cli.build_parser()


def test_a_broken_import_inside_a_subcommand_is_not_hidden(monkeypatch) -> None:
    real = cli.importlib.import_module

    def fake(name: str):
        if name == "critbatch.commands.analyze":
            raise ModuleNotFoundError("No module named 'notinstalled'", name="notinstalled")
        return real(name)

    monkeypatch.setattr(cli.importlib, "import_module", fake)
    with pytest.raises(ModuleNotFoundError):
        cli.build_parser()


def _console_script() -> str:
    script = Path(sys.executable).with_name("critbatch")
    return str(script) if script.exists() else (shutil.which("critbatch") or "")


@pytest.mark.skipif(not _console_script(), reason="the critbatch console script is not installed")
def test_console_script_subprocess(tmp_path) -> None:
    script = _console_script()
    ok = subprocess.run(
        [script, "estimate", "--reference", REFERENCE, *DCGAN,
         "--target", "optimizer=rmsprop,lr=1e-4", "--json"],
        capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["estimates"][0]["grid_batch_size"] == 128
    bad = subprocess.run(
        [script, "analyze", str(tmp_path / "missing.csv")],
        capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "RESULTS" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_python_dash_m_critbatch() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "critbatch", "estimate", "--reference",
         "optimizer=adam,lr=1e-4,beta1=2,batch=32", *DCGAN],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == ("critbatch: error: --reference.beta1: must be in [0, 1), "
                                   "got 2.0")
