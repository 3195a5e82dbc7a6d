"""`critbatch estimate`: b* for other optimizer settings from one measured reference (Prop. 3.4).

The noise ratio sigma^2/eps^3 belongs to the architecture and the target quality, not to the
optimizer: back-calculated from a measured b* it carries over to other optimizers, learning
rates, betas and dataset sizes of the same architecture.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from critbatch import science
from critbatch.commands import print_json, short_number, stdout_console
from critbatch.errors import InputError

HELP = "estimate b* for other optimizers from a measured reference b* (Proposition 3.4)"

REFERENCE_KEYS = ("optimizer", "lr", "beta1", "beta2", "batch", "low", "high")
TARGET_KEYS = ("optimizer", "lr", "beta1", "beta2", "params", "dataset_size")
ALIASES = {"batch_size": "batch", "learning_rate": "lr"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `estimate` to the CLI."""
    p = subparsers.add_parser(
        "estimate", help=HELP,
        description=HELP + ". Back-calculates the noise ratio sigma^2/eps^3 from the reference "
        "and gives each target's b* (a lower bound on the generator's critical batch size, "
        "valid for the same architecture) and the nearest grid point (ties go to the smaller).",
        epilog="example: critbatch estimate --reference optimizer=adam,lr=1e-4,beta1=0.5,"
        "beta2=0.999,batch=32 --params 3576704 --dataset-size 3033042 "
        "--target optimizer=rmsprop,lr=1e-4",
    )
    p.add_argument(
        "--reference", required=True, metavar="KEY=VALUE,...",
        help="the measured setting: optimizer (adam, adabelief, rmsprop), lr (the generator's "
        "learning rate), beta1, beta2 (default 0.5, 0.999), batch (its measured b*), and "
        "optionally low and high (an interval of b*, e.g. its fitted credible interval; "
        "widened to hold batch): each estimate then gets the interval they give",
    )
    p.add_argument("--params", required=True, metavar="N",
                   help="generator parameters Theta of the reference (all trainable ones)")
    p.add_argument("--dataset-size", required=True, metavar="N",
                   help="training examples |S| of the reference")
    p.add_argument(
        "--target", action="append", default=[], metavar="KEY=VALUE,...",
        help="a setting to estimate (repeatable): optimizer, lr, beta1, beta2, params, "
        "dataset_size; params, dataset_size and the betas default to the reference's",
    )
    p.add_argument("--grid", metavar="B1,B2,...",
                   help="batch sizes to snap the estimates to (default: powers of two 1..65536)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def parse_pairs(text: str, field: str, allowed: tuple[str, ...]) -> dict[str, str]:
    """`k=v,k=v` into a dict; keys are case-insensitive and may use `-` for `_`."""
    out: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip().lower().replace("-", "_")
        key = ALIASES.get(key, key)
        if not sep or not key:
            raise InputError(f"{field}: expected KEY=VALUE, got {item!r}")
        if key not in allowed:
            raise InputError(f"{field}.{key}: unknown key, expected one of {', '.join(allowed)}")
        if key in out:
            raise InputError(f"{field}.{key}: given twice")
        out[key] = value.strip()
    return out


def parse_float(text: str, field: str) -> float:
    """A finite number, or InputError naming `field`."""
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{field}: not a number: {text!r}") from None
    if not math.isfinite(value):
        raise InputError(f"{field}: must be a finite number, got {text!r}")
    return value


def parse_count(text: str, field: str) -> int:
    """A positive integer (3576704, 3.576704e6), or InputError naming `field`."""
    value = parse_float(text, field)
    if not value.is_integer() or value <= 0:
        raise InputError(f"{field}: must be a positive integer, got {text!r}")
    return int(value)


def _setting(pairs: dict[str, str], field: str, defaults: science.OptimizerSetting | None
             ) -> science.OptimizerSetting:
    for key in ("optimizer", "lr"):
        if key not in pairs:
            raise InputError(f"{field}.{key}: required")
    betas = {
        name: parse_float(pairs[name], f"{field}.{name}") if name in pairs
        else getattr(defaults, name, None)
        for name in ("beta1", "beta2")
    }
    try:
        return science.OptimizerSetting(
            optimizer=pairs["optimizer"].lower(),
            lr=parse_float(pairs["lr"], f"{field}.lr"),
            **{k: v for k, v in betas.items() if v is not None},
        )
    except science.ScienceError as exc:  # its message starts with the key
        raise InputError(f"{field}.{exc}") from None


def parse_grid(text: str | None) -> tuple[int, ...]:
    """`--grid 1,2,4`: positive integers, at least one."""
    if text is None:
        return science.DEFAULT_GRID
    grid = tuple(parse_count(v.strip(), "--grid") for v in text.split(",") if v.strip())
    if not grid:
        raise InputError("--grid: needs at least one batch size")
    return grid


def compute(args: argparse.Namespace) -> dict[str, Any]:
    """The estimate as plain data (what `--json` prints)."""
    ref_pairs = parse_pairs(args.reference, "--reference", REFERENCE_KEYS)
    reference = _setting(ref_pairs, "--reference", None)
    if "batch" not in ref_pairs:
        raise InputError("--reference.batch: required (the measured b* of the reference)")
    batch = _positive(ref_pairs, "batch")
    interval = _interval(ref_pairs, batch)
    params = parse_count(args.params, "--params")
    dataset_size = parse_count(args.dataset_size, "--dataset-size")
    grid = parse_grid(args.grid)
    targets = []
    for i, text in enumerate(args.target):
        field = f"--target[{i}]"
        pairs = parse_pairs(text, field, TARGET_KEYS)
        setting = _setting(pairs, field, reference)
        t_params = parse_count(pairs["params"], f"{field}.params") if "params" in pairs else None
        t_size = (parse_count(pairs["dataset_size"], f"{field}.dataset_size")
                  if "dataset_size" in pairs else None)
        targets.append((setting, t_params, t_size))
    if not math.isfinite(science.noise_ratio(reference, interval[1] if interval else batch,
                                             params, dataset_size)):
        raise InputError("--reference: the noise ratio sigma^2/eps^3 overflows: batch, high, lr, "
                         "--params or --dataset-size is out of any sensible range")
    ratio, estimates = science.estimate_targets(
        reference, batch, params, dataset_size, targets, grid, reference_interval=interval)
    return {
        "reference": {**_setting_dict(reference), "batch_size": batch,
                      "batch_size_interval": list(interval) if interval else None,
                      "params": params, "dataset_size": dataset_size},
        "noise_ratio": ratio,
        "noise_ratio_interval": [science.noise_ratio(reference, b, params, dataset_size)
                                 for b in interval] if interval else None,
        "estimates": [
            {**_setting_dict(e.setting), "params": e.params, "dataset_size": e.dataset_size,
             "batch_size": e.batch_size,
             "batch_size_interval": list(e.interval) if e.interval else None,
             "grid_batch_size": e.grid_batch_size}
            for e in estimates
        ],
        "warnings": [w for i, e in enumerate(estimates)
                     if (w := _beyond_grid(f"--target[{i}]", e.batch_size, grid))],
    }


def _positive(pairs: dict[str, str], key: str) -> float:
    value = parse_float(pairs[key], f"--reference.{key}")
    if value <= 0:
        raise InputError(f"--reference.{key}: must be > 0, got {pairs[key]!r}")
    return value


def _interval(pairs: dict[str, str], batch: float) -> tuple[float, float] | None:
    """low and high, both or neither, widened to hold the measured batch (as a status's
    noiseRatioInterval is)."""
    given = [k for k in ("low", "high") if k in pairs]
    if not given:
        return None
    if len(given) == 1:
        other = "high" if given == ["low"] else "low"
        raise InputError(f"--reference.{other}: required with --reference.{given[0]} (an "
                         "interval needs both ends)")
    low, high = _positive(pairs, "low"), _positive(pairs, "high")
    if low > high:
        raise InputError(f"--reference.low: must be <= high, got {pairs['low']!r} and "
                         f"{pairs['high']!r}")
    return science.widen((low, high), batch)


def _beyond_grid(field: str, value: float, grid: tuple[int, ...]) -> str | None:
    """A warning when an estimate lies outside the grid: its grid point is then only the
    nearest end, not an estimate."""
    lo, hi = min(grid), max(grid)
    if value > hi:
        shown = "overflows (infinite)" if math.isinf(value) else \
            f"{short_number(value)} is above the grid's largest batch size {hi}"
        return f"{field}: the estimate {shown}: its grid b* is clamped to {hi}"
    if value < lo:
        return (f"{field}: the estimate {short_number(value)} is below the grid's smallest "
                f"batch size {lo}: its grid b* is clamped to {lo}")
    return None


def _span(ends: list[float] | None) -> str:
    return f" [{short_number(ends[0])}, {short_number(ends[1])}]" if ends else ""


def _setting_dict(s: science.OptimizerSetting) -> dict[str, Any]:
    return {"optimizer": s.optimizer, "lr": s.lr, "beta1": s.beta1, "beta2": s.beta2}


def run(args: argparse.Namespace) -> int:
    """Print the estimates; exit 0."""
    result = compute(args)
    if args.json:
        print_json(result)
        return 0
    from rich.table import Table

    ref = result["reference"]
    console = stdout_console()
    console.print(
        f"reference: {ref['optimizer']} lr={short_number(ref['lr'])} "
        f"beta1={short_number(ref['beta1'])} beta2={short_number(ref['beta2'])}, "
        f"measured b* = {short_number(ref['batch_size'])}{_span(ref['batch_size_interval'])}, "
        f"Theta = {ref['params']}, |S| = {ref['dataset_size']}", markup=False, soft_wrap=True)
    console.print(f"noise ratio sigma^2/eps^3 = {result['noise_ratio']:.6g}"
                  f"{_span(result['noise_ratio_interval'])}", markup=False, soft_wrap=True)
    if not result["estimates"]:
        console.print("no --target given: nothing to estimate", style="yellow")
        return 0
    table = Table(title="estimated critical batch size (Proposition 3.4, same architecture)",
                  title_justify="left")
    spans = ref["batch_size_interval"] is not None
    for col in ("optimizer", "lr", "beta1", "beta2", "Theta", "|S|", "b*",
                *(("interval",) if spans else ()), "grid b*"):
        table.add_column(col, justify="left" if col == "optimizer" else "right")
    for e in result["estimates"]:
        rms = e["optimizer"] == "rmsprop"  # its bound does not depend on the betas
        table.add_row(e["optimizer"], short_number(e["lr"]),
                      "-" if rms else short_number(e["beta1"]),
                      "-" if rms else short_number(e["beta2"]), str(e["params"]),
                      str(e["dataset_size"]), short_number(e["batch_size"]),
                      *((_span(e["batch_size_interval"]).strip(),) if spans else ()),
                      str(e["grid_batch_size"]))
    console.print(table)
    for w in result["warnings"]:
        console.print(f"warning: {w}", style="yellow", markup=False, soft_wrap=True)
    return 0
