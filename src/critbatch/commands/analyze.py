"""`critbatch analyze RESULTS`: the critical batch size, and how sure it is, from a table of
finished trials.

For results gathered by hand or by another tool: one row per trial with its batch size, the
steps it took to reach the target (or the steps done before it stopped), and whether it
reached it. A trial that did not reach the target is right-censored: evidence that its N(b)
exceeds its steps, never a measurement and never a reason to drop its batch size's other seeds.
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

from critbatch import posterior, science
from critbatch.commands import print_json, short_number, stdout_console
from critbatch.errors import InputError
from critbatch.files import load_yaml, read_text
from critbatch.spec import MAX_BATCH

HELP = "the critical batch size and how sure it is, from a table of trials (CSV, JSON or YAML)"
REQUIRED = ("batch_size", "steps", "reached")
TRUE = {"true", "t", "yes", "y", "1"}
FALSE = {"false", "f", "no", "n", "0"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `analyze` to the CLI."""
    p = subparsers.add_parser(
        "analyze", help=HELP,
        description=HELP + ". Prints the most probable b* among the tested batch sizes, the "
        "plausible set (the fewest batch sizes holding --confidence of the probability of being "
        "the SFO argmin), each batch size's probability and fraction of seeds that reached the "
        "target, the fitted b* of N(b) = A*b/(K*b - B) with its credible interval (censored "
        "trials included), N_min, the descriptive least mean SFO, and warnings.",
        epilog="RESULTS columns (CSV header, or keys of each JSON/YAML row): batch_size "
        "(positive integer), steps (N(b) when reached, else the steps done), reached "
        "(true/false, yes/no, 1/0) are required; seed is optional (default 0); eval_every "
        "is optional (default --eval-every); other columns "
        "are ignored. JSON and YAML take a list of rows, {\"trials\": [rows]}, or JSON Lines "
        "(one row per line, as the trainer prints its result).",
    )
    p.add_argument("results", metavar="RESULTS", help="the trials file, or - for stdin")
    p.add_argument("--format", choices=("auto", "csv", "json", "yaml"), default="auto",
                   help="file format (default: from the extension, else from the content)")
    p.add_argument("--confidence", type=float, default=0.95,
                   help="the plausible set's level, and the fitted b*'s interval's "
                   "(default 0.95)")
    p.add_argument("--eval-every", type=float, default=0.0, metavar="STEPS",
                   help="steps between evaluations: a reached trial crossed the target within "
                   "the last STEPS before its steps (default 0: steps are exact)")
    p.add_argument("--budget", type=float, default=None, metavar="STEPS",
                   help="the steps each run was given (spec.target.maxSteps): what a seed that "
                   "stalls costs before it is run again (default: the most steps of any "
                   "trial)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------
# Reading the results
# ---------------------------------------------------------------------------------------------


MAX_BYTES = 16 << 20  # a results table of some hundred thousand trials


def _read_text(path: str) -> tuple[str, str]:
    """(label for messages, text) of a file or of stdin for `-`; at most MAX_BYTES, UTF-8
    (a spreadsheet's byte order mark is dropped)."""
    if path != "-":
        return path, read_text(path, "RESULTS", limit=MAX_BYTES, encoding="utf-8-sig")
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # a text stream (tests)
        text = sys.stdin.read(MAX_BYTES + 1)
        data = text.encode("utf-8", errors="surrogateescape")
    else:
        data = buffer.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise InputError(f"<stdin>: larger than {MAX_BYTES >> 20} MiB")
    try:
        return "<stdin>", data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"<stdin>: not UTF-8 text (invalid byte at offset {exc.start})") \
            from None


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
        data = json.loads(text) if fmt_name == "json" else load_yaml(text, label, finite=False)
    except json.JSONDecodeError as exc:
        data = _json_lines(label, text, exc)
    except RecursionError:
        raise InputError(f"{label}: nested too deeply") from None
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
        except (json.JSONDecodeError, RecursionError):
            err = first_error if not rows else None
            at = f"line {err.lineno}" if err else f"line {line_no}"
            raise InputError(f"{label}: not valid JSON at {at}") from None
    return rows


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _cell_float(value: Any, where: str, column: str, expected: str) -> float:
    """A cell as a float: numbers and numeric text, never a boolean."""
    if isinstance(value, bool):
        raise InputError(f"{where}, column {column}: expected {expected}, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}, column {column}: not a number: {_short(value)}") from None
    except OverflowError:
        raise InputError(f"{where}, column {column}: too large: {_short(value)}") from None


def _cell_int(value: Any, where: str, column: str) -> int:
    number = _cell_float(value, where, column, "an integer")
    if not number.is_integer():
        raise InputError(f"{where}, column {column}: expected an integer, got {value!r}")
    return int(number)


def _cell_number(value: Any, where: str, column: str) -> float:
    number = _cell_float(value, where, column, "a number")
    if not math.isfinite(number):
        raise InputError(f"{where}, column {column}: must be finite, got {value!r}")
    return number


def _cell_bool(value: Any, where: str, column: str) -> bool:
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


def parse_trial(where: str, row: Mapping[str, Any],
                default_eval_every: float = 0.0) -> posterior.Evidence:
    """One row into the evidence of one trial; every error names the row and the column."""
    for col in REQUIRED:
        if col not in row or row[col] is None or row[col] == "":
            raise InputError(f"{where}, column {col}: missing")
    batch = _cell_int(row["batch_size"], where, "batch_size")
    if not 0 < batch <= MAX_BATCH:
        raise InputError(f"{where}, column batch_size: must be in 1..{MAX_BATCH}, got "
                         f"{_short(row['batch_size'])}")
    steps = _cell_number(row["steps"], where, "steps")
    reached = _cell_bool(row["reached"], where, "reached")
    if steps < 0 or (reached and steps == 0):
        raise InputError(f"{where}, column steps: must be "
                         f"{'> 0 for a trial that reached the target' if reached else '>= 0'}, "
                         f"got {row['steps']!r}")
    seed_value = row.get("seed")
    seed = 0 if seed_value is None or seed_value == "" else _cell_int(seed_value, where, "seed")
    every = row.get("eval_every")
    eval_every = default_eval_every if every is None or every == "" \
        else _cell_number(every, where, "eval_every")
    if eval_every < 0:
        raise InputError(f"{where}, column eval_every: must be >= 0, got {every!r}")
    return posterior.Evidence(batch_size=batch, steps=steps, reached=reached,
                              eval_every=eval_every, seed=seed)


def load_trials(path: str, fmt_name: str = "auto",
                eval_every: float = 0.0) -> list[posterior.Evidence]:
    """The trials of a CSV, JSON (or JSON Lines) or YAML file, or of stdin for `-`."""
    label, text = _read_text(path)
    kind = _detect(path, text) if fmt_name == "auto" else fmt_name
    rows = _csv_rows(label, text) if kind == "csv" else _structured_rows(label, text, kind)
    trials, first = [], {}
    for where, row in rows:
        trial = parse_trial(where, row, eval_every)
        key = (trial.batch_size, trial.seed)
        if key in first:
            raise InputError(_duplicate(label, first[key], (where, row), key))
        first[key] = (where, row)
        trials.append(trial)
    if not trials:
        raise InputError(f"{label}: no trials")
    return trials


def _duplicate(label: str, one: tuple[str, Mapping[str, Any]], two: tuple[str, Mapping[str, Any]],
               key: tuple[int, int]) -> str:
    """Two rows for one trial: counting both would double its evidence."""
    names = [w.removeprefix(f"{label}: ") for w, _ in (one, two)]
    text = (f"{label}: {names[0]} and {names[1]} are both batch_size {key[0]}, seed {key[1]}: "
            "each trial must appear once")
    if any(row.get("seed") in (None, "") for _, row in (one, two)):
        text += " (rows without a seed are seed 0: add a seed column to tell seeds apart)"
    return text


# ---------------------------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------------------------


def analyze(trials: list[posterior.Evidence], *, confidence: float = 0.95,
            budget: float | None = None) -> dict[str, Any]:
    """The answer and how sure it is, as plain data (what `--json` prints)."""
    grid = sorted({t.batch_size for t in trials})
    budget = budget or posterior.default_budget(trials)
    post = posterior.infer(trials, grid, confidence=confidence, interval_level=confidence,
                           budget=budget)
    measured = science.measure(
        science.Trial(t.batch_size, t.steps, t.reached, t.seed) for t in trials)
    warnings = [w for w in measured.warnings if not w.startswith("target not reached")]
    partial = sorted(b for b, f in post.reach_fraction.items() if 0 < f < 1)
    if partial:
        warnings.append("some seeds did not reach the target where others did, at batch "
                        "size(s) " + ", ".join(map(str, partial)) + " (see reach_fraction): "
                        f"the most probable b* counts a seed that stalls as a run of {budget:g} "
                        "steps (--budget) that is run again; the fitted b*, of the N(b) of the "
                        "seeds that reached, does not")
    if post.reason:
        warnings.append(post.reason)
    elif post.most_probable in (grid[0], grid[-1]) and len(grid) > 1:
        warnings.append(f"the most probable b* = {post.most_probable} is at the edge of the "
                        f"grid ({grid[0]}..{grid[-1]}): the least SFO may lie beyond it")
    if post.most_probable is not None and not post.resolved:
        warnings.append(f"not resolved at {confidence:g}: the plausible set has "
                        f"{len(post.plausible)} batch sizes; more seeds there would narrow it")
    return {
        "most_probable_batch_size": post.most_probable,
        "plausible_batch_sizes": list(post.plausible),
        "argmin_probabilities": {str(b): p for b, p in sorted(post.probabilities.items())},
        "resolved": post.resolved,
        "confidence": confidence,
        "budget": budget,
        "reach_fraction": {str(b): f for b, f in sorted(post.reach_fraction.items())},
        "fitted_batch_size": post.fitted,
        "fitted_interval": list(post.interval) if post.interval else None,
        "n_min": post.n_min,
        "measured_batch_size": measured.batch_size,
        "sfo": [{"batch_size": p.batch_size, "steps": p.steps, "sfo": p.sfo, "trials": p.trials}
                for p in measured.points],
        "censored": list(measured.censored),
        "trials": len(trials),
        "warnings": warnings,
    }


def run(args: argparse.Namespace) -> int:
    """Print the analysis; exit 0 (warnings do not fail it: they are part of the answer)."""
    if not 0.5 < args.confidence < 1:
        raise InputError(f"--confidence: must be between 0.5 and 1, got {args.confidence}")
    if not (math.isfinite(args.eval_every) and args.eval_every >= 0):
        raise InputError(f"--eval-every: must be a finite number >= 0, got {args.eval_every}")
    if args.budget is not None and not (math.isfinite(args.budget) and args.budget > 0):
        raise InputError(f"--budget: must be a finite number > 0, got {args.budget}")
    trials = load_trials(args.results, args.format, args.eval_every)
    result = analyze(trials, confidence=args.confidence, budget=args.budget)
    if args.json:
        print_json(result)
    else:
        print_table(result, trials)
    return 0


def print_table(result: Mapping[str, Any], trials: list[posterior.Evidence]) -> None:
    """The answer and its plausible set first, then each batch size's evidence, then warnings."""
    from rich.table import Table

    console = stdout_console()
    best = result["most_probable_batch_size"]
    level = f"{result['confidence']:.0%}"
    if best is None:
        console.print("b*: - (no trial reached the target)", markup=False)
    else:
        plausible = ", ".join(map(str, result["plausible_batch_sizes"]))
        state = "resolved" if result["resolved"] else "not resolved"
        chance = result["argmin_probabilities"].get(str(best), 0.0)
        console.print(f"b*: {best} (probability {chance:.2f}; {state}: plausible at {level}: "
                      f"{plausible})", markup=False, soft_wrap=True)
    table = Table(title="Per batch size (N(b): mean over the seeds that reached the target)",
                  title_justify="left")
    for col in ("b", "seeds", "reached", "N(b)", "SFO", "P(b*)", ""):
        table.add_column(col, justify="left" if not col else "right")
    points = {p["batch_size"]: p for p in result["sfo"]}
    for b in sorted({t.batch_size for t in trials}):
        group = [t for t in trials if t.batch_size == b]
        reached = [t.steps for t in group if t.reached]
        steps = sum(reached) / len(reached) if reached else None
        notes = ["b*" if b == best else "plausible" if b in result["plausible_batch_sizes"]
                 else ""]
        if b in points and b == result["measured_batch_size"]:
            notes.append("min mean SFO")
        if len(reached) < len(group):
            longest = max(t.steps for t in group if not t.reached)
            notes.append(f"censored >= {short_number(longest)}")
        note = ", ".join(filter(None, notes))
        table.add_row(str(b), str(len(group)), f"{len(reached)}/{len(group)}",
                      short_number(steps, 6) if steps is not None else "-",
                      short_number(steps * b, 6) if steps is not None else "-",
                      f"{result['argmin_probabilities'].get(str(b), 0.0):.3f}", note,
                      style="bold" if b == best else None)
    console.print(table)
    if result["fitted_batch_size"] is not None:
        interval = result["fitted_interval"]
        ci = (f" [{short_number(interval[0])}, {short_number(interval[1])}] "
              f"({level} credible interval)" if interval else "")
        console.print(f"fitted b*: {short_number(result['fitted_batch_size'])}{ci}", markup=False,
                      soft_wrap=True)
        console.print(f"N_min (steps with unlimited batch): {short_number(result['n_min'], 6)}",
                      markup=False)
    for w in result["warnings"]:
        console.print(f"warning: {w}", style="yellow", markup=False, soft_wrap=True)
