"""`critbatch analyze RESULTS`: measured and fitted b* from a table of finished trials.

For results gathered by hand or by another tool: one row per trial with its batch size, the
steps it took to reach the target (or the steps done before it stopped), and whether it
reached it. A trial that did not reach the target is right-censored and never a measurement.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from critbatch import science
from critbatch.commands import fmt, print_json, stdout_console
from critbatch.errors import InputError

HELP = "measured and fitted b* from a table of trials (CSV, JSON or YAML)"
REQUIRED = ("batch_size", "steps", "reached")
TRUE = {"true", "t", "yes", "y", "1"}
FALSE = {"false", "f", "no", "n", "0"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `analyze` to the CLI."""
    p = subparsers.add_parser(
        "analyze",
        help=HELP,
        description=HELP + ". Prints the SFO (N(b)*b) per batch size, the measured b* (least "
        "SFO), the fitted b* of N(b) = A*b/(K*b - B) with a bootstrap interval when seeds "
        "repeat, N_min, and warnings (censored trials, a fit that is not identifiable).",
        epilog="RESULTS columns (CSV header, or keys of each JSON/YAML row): batch_size "
        "(positive integer), steps (N(b) when reached, else the steps done), reached "
        "(true/false, yes/no, 1/0) are required; seed is optional (default 0); other columns "
        "are ignored. JSON and YAML take a list of rows, {\"trials\": [rows]}, or JSON Lines "
        "(one row per line, as the trainer prints its result).",
    )
    p.add_argument("results", metavar="RESULTS", help="the trials file, or - for stdin")
    p.add_argument("--format", choices=("auto", "csv", "json", "yaml"), default="auto",
                   help="file format (default: from the extension, else from the content)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="ROUNDS",
                   help="bootstrap rounds for the fitted b*'s interval (default 1000; 0: none)")
    p.add_argument("--confidence", type=float, default=0.95,
                   help="the interval's confidence level (default 0.95)")
    p.add_argument("--rng-seed", type=int, default=0, metavar="N",
                   help="seed of the bootstrap's random numbers (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------
# Reading the results
# ---------------------------------------------------------------------------------------------


def _read_text(path: str) -> tuple[str, str]:
    """(label for messages, text) of a file or of stdin for `-`."""
    if path == "-":
        return "<stdin>", sys.stdin.read().lstrip("\ufeff")
    p = Path(path)
    try:
        return path, p.read_text(encoding="utf-8-sig")  # -sig: spreadsheets write a BOM
    except FileNotFoundError:
        raise InputError(f"RESULTS: no such file: {path}") from None
    except IsADirectoryError:
        raise InputError(f"RESULTS: is a directory, not a file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"RESULTS: cannot read {path}: {exc}") from None


def _detect(path: str, text: str) -> str:
    suffix = Path(path).suffix.lower() if path != "-" else ""
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".json", ".jsonl", ".ndjson"):
        return "json"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        return "json"
    first = stripped.split("\n", 1)[0]
    return "csv" if ("," in first or "\t" in first) and ":" not in first else "yaml"


def _key(name: Any) -> str:
    return str(name).strip().lower().replace("-", "_")


def _csv_rows(label: str, text: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    try:
        dialect = csv.Sniffer().sniff(text.split("\n", 1)[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    header = next(reader, None)
    if not header:
        raise InputError(f"{label}: empty, expected a CSV header with {', '.join(REQUIRED)}")
    columns = [_key(h) for h in header]
    for col in REQUIRED:
        if col not in columns:
            raise InputError(f"{label}: column {col} is missing (the header has: "
                             f"{', '.join(columns)})")
    for number, cells in enumerate(reader, start=1):
        if not any(c.strip() for c in cells):
            continue
        where = f"{label}: row {number} (line {reader.line_num})"
        if len(cells) > len(columns):
            raise InputError(f"{where}: {len(cells)} cells but {len(columns)} columns")
        row = {c: v.strip() for c, v in zip(columns, cells, strict=False)}
        yield where, row


def _structured_rows(label: str, text: str, fmt_name: str) -> Iterator[tuple[str, Mapping]]:
    try:
        data = json.loads(text) if fmt_name == "json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        data = _json_lines(label, text, exc)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{label}: not valid YAML{where}") from None
    if isinstance(data, Mapping) and "trials" in data:
        data = data["trials"]
    elif isinstance(data, Mapping):
        data = [data]  # one trial, e.g. one trainer result
    if not isinstance(data, list):
        raise InputError(f"{label}: expected a list of trials (or {{trials: [...]}}), "
                         f"got {type(data).__name__}")
    for number, row in enumerate(data, start=1):
        where = f"{label}: row {number}"
        if not isinstance(row, Mapping):
            raise InputError(f"{where}: expected a mapping with {', '.join(REQUIRED)}, "
                             f"got {type(row).__name__}")
        yield where, {_key(k): v for k, v in row.items()}


def _json_lines(label: str, text: str, first_error: json.JSONDecodeError) -> list[Any]:
    """JSON Lines: one trial object per line (what the trainer prints last)."""
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            err = first_error if not rows else None
            at = f"line {err.lineno}" if err else f"line {line_no}"
            raise InputError(f"{label}: not valid JSON at {at}") from None
    return rows


def _int(value: Any, where: str, column: str) -> int:
    if isinstance(value, bool):
        raise InputError(f"{where}, column {column}: expected an integer, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}, column {column}: not a number: {value!r}") from None
    if not number.is_integer():
        raise InputError(f"{where}, column {column}: expected an integer, got {value!r}")
    return int(number)


def _number(value: Any, where: str, column: str) -> float:
    if isinstance(value, bool):
        raise InputError(f"{where}, column {column}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}, column {column}: not a number: {value!r}") from None
    if not math.isfinite(number):
        raise InputError(f"{where}, column {column}: must be finite, got {value!r}")
    return number


def _bool(value: Any, where: str, column: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise InputError(f"{where}, column {column}: expected true or false, got {value!r}")


def parse_trial(where: str, row: Mapping[str, Any]) -> science.Trial:
    """One row into a Trial; every error names the row and the column."""
    for col in REQUIRED:
        if col not in row or row[col] is None or row[col] == "":
            raise InputError(f"{where}, column {col}: missing")
    batch = _int(row["batch_size"], where, "batch_size")
    if batch <= 0:
        raise InputError(f"{where}, column batch_size: must be positive, got {row['batch_size']!r}")
    steps = _number(row["steps"], where, "steps")
    reached = _bool(row["reached"], where, "reached")
    if steps < 0 or (reached and steps == 0):
        raise InputError(f"{where}, column steps: must be "
                         f"{'> 0 for a trial that reached the target' if reached else '>= 0'}, "
                         f"got {row['steps']!r}")
    seed_value = row.get("seed")
    seed = 0 if seed_value is None or seed_value == "" else _int(seed_value, where, "seed")
    return science.Trial(batch, steps, reached, seed)


def load_trials(path: str, fmt_name: str = "auto") -> list[science.Trial]:
    """The trials of a CSV, JSON (or JSON Lines) or YAML file, or of stdin for `-`."""
    label, text = _read_text(path)
    kind = _detect(path, text) if fmt_name == "auto" else fmt_name
    rows = _csv_rows(label, text) if kind == "csv" else _structured_rows(label, text, kind)
    trials = [parse_trial(where, row) for where, row in rows]
    if not trials:
        raise InputError(f"{label}: no trials")
    return trials


# ---------------------------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------------------------


def analyze(trials: list[science.Trial], *, bootstrap: int = 1000, confidence: float = 0.95,
            rng_seed: int = 0) -> dict[str, Any]:
    """Measured and fitted b* as plain data (what `--json` prints)."""
    measured = science.measure(trials)
    fitted = science.fit(trials, bootstrap=bootstrap, confidence=confidence, rng=rng_seed)
    warnings = list(measured.warnings)
    reached = [t for t in trials if t.reached]
    all_sizes = sorted({t.batch_size for t in trials})
    if measured.batch_size is not None and len(measured.points) > 1 and measured.batch_size in (
            all_sizes[0], all_sizes[-1]):
        warnings.append(f"measured b* = {measured.batch_size} is at the edge of the grid "
                        f"({all_sizes[0]}..{all_sizes[-1]}): the least SFO may lie beyond it")
    if not fitted.identifiable:
        warnings.append(fitted.reason or "fit: not identifiable")
    else:
        lo, hi = min(t.batch_size for t in reached), max(t.batch_size for t in reached)
        if not lo <= fitted.batch_size <= hi:
            warnings.append(f"fitted b* = {fitted.batch_size:.4g} lies outside the measured "
                            f"batch sizes {lo}..{hi}: an extrapolation")
        if fitted.interval is None and bootstrap > 0:
            repeats = len(reached) > len({t.batch_size for t in reached})
            warnings.append(
                "fit: no interval: the bootstrap needs more than one seed at some batch size"
                if not repeats else
                "fit: no interval: too few points, or too few resampled fits were identifiable")
    return {
        "measured_batch_size": measured.batch_size,
        "fitted_batch_size": fitted.batch_size,
        "fitted_interval": list(fitted.interval) if fitted.interval else None,
        "confidence": confidence,
        "n_min": fitted.n_min,
        "sfo": [{"batch_size": p.batch_size, "steps": p.steps, "sfo": p.sfo, "trials": p.trials}
                for p in measured.points],
        "censored": list(measured.censored),
        "trials": len(trials),
        "warnings": warnings,
    }


def run(args: argparse.Namespace) -> int:
    """Print the analysis; exit 0 (warnings do not fail it: they are part of the answer)."""
    if args.bootstrap < 0:
        raise InputError(f"--bootstrap: must be >= 0, got {args.bootstrap}")
    if not 0 < args.confidence < 1:
        raise InputError(f"--confidence: must be between 0 and 1, got {args.confidence}")
    trials = load_trials(args.results, args.format)
    result = analyze(trials, bootstrap=args.bootstrap, confidence=args.confidence,
                     rng_seed=args.rng_seed)
    if args.json:
        print_json(result)
    else:
        print_table(result, trials)
    return 0


def print_table(result: Mapping[str, Any], trials: list[science.Trial]) -> None:
    """SFO per batch size, then b* measured and fitted, then the warnings."""
    from rich.table import Table

    table = Table(title="SFO per batch size (N(b) = mean steps to the target over seeds)",
                  title_justify="left")
    for col in ("batch size", "trials", "N(b)", "SFO", ""):
        table.add_column(col, justify="left" if not col else "right")
    points = {p["batch_size"]: p for p in result["sfo"]}
    for b in sorted({t.batch_size for t in trials}):
        group = [t for t in trials if t.batch_size == b]
        if b in points:
            p = points[b]
            note = "least SFO: measured b*" if b == result["measured_batch_size"] else ""
            table.add_row(str(b), str(p["trials"]), fmt(p["steps"], 6), fmt(p["sfo"], 6), note,
                          style="bold" if note else None)
        else:
            stopped = max(t.steps for t in group if not t.reached)
            done = sum(t.reached for t in group)
            table.add_row(str(b), str(len(group)), "-", "-",
                          f"censored: {len(group) - done} stopped, at most {fmt(stopped)} steps")
    console = stdout_console()
    console.print(table)
    measured = result["measured_batch_size"]
    shown = measured if measured is not None else "- (no batch size reached the target)"
    console.print(f"measured b*: {shown}", markup=False, soft_wrap=True)
    if result["fitted_batch_size"] is None:
        console.print("fitted b*: - (not identifiable)", markup=False)
    else:
        interval = result["fitted_interval"]
        ci = (f" [{fmt(interval[0])}, {fmt(interval[1])}] "
              f"({result['confidence']:.0%} bootstrap interval)" if interval else "")
        console.print(f"fitted b*: {fmt(result['fitted_batch_size'])}{ci}", markup=False,
                      soft_wrap=True)
        console.print(f"N_min (steps with unlimited batch): {fmt(result['n_min'], 6)}",
                      markup=False)
    for w in result["warnings"]:
        console.print(f"warning: {w}", style="yellow", markup=False, soft_wrap=True)
