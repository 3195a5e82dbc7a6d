"""A sweep's report: a plot of N(b) and SFO(b) with the fitted curve, and a Markdown summary.

Input is the CriticalBatchSweep resource as plain data (metadata, spec, status in the CRD's
camelCase), so a local run (`critbatch run`) and a cluster sweep (`critbatch report`) render
the same report from the same status.
"""

from __future__ import annotations

import contextlib
import io
import math
import textwrap
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from critbatch.errors import InputError, OutputError
from critbatch.files import atomic_write
from critbatch.spec import MAX_BATCH

PNG_NAME = "critbatch.png"
SVG_NAME = "critbatch.svg"
MARKDOWN_NAME = "summary.md"

_STYLE = {  # phase: (marker, filled, colour, legend)
    "Reached": ("o", True, "tab:blue", "reached τ"),
    "Censored": ("^", False, "tab:red", "censored (lower bound)"),
    "Pruned": ("x", True, "tab:gray", "pruned (lower bound)"),
    "Failed": ("X", True, "black", "failed"),
}


class ReportError(InputError):
    """The input is not a CriticalBatchSweep resource with a status to report on."""


@dataclass(frozen=True)
class ReportFiles:
    png: Path
    svg: Path
    markdown: Path


def _ends(value: Any) -> tuple[float, float] | None:
    """An interval in a status as (low, high); None unless it is two numbers."""
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        return None
    low, high = (_loose_number(v) for v in value)
    return None if low is None or high is None else (low, high)


def _pair(value: Any) -> str | None:
    """`[low, high]` of an interval in a status, for the text; None unless two numbers."""
    ends = _ends(value)
    return None if ends is None else f"[{fmt(ends[0])}, {fmt(ends[1])}]"


def _loose_number(value: Any) -> float | None:
    """A finite float from a number or numeric text (a hand-edited status may hold either)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def fmt(value: Any, digits: int = 4) -> str:
    """A number for humans: integers without a decimal point, others to `digits` significant."""
    x = _loose_number(value)
    if x is None:
        return "—"
    if abs(x) >= 1e15:
        return f"{x:.{digits}g}"
    if x == int(x) or abs(x) >= 10**digits:
        return str(round(x))
    return f"{x:.{digits}g}"


def check_resource(resource: Any) -> Mapping[str, Any]:
    """The resource itself, after checking it has the parts a report needs."""
    if not isinstance(resource, Mapping):
        raise ReportError("input: expected a CriticalBatchSweep resource (a YAML mapping)")
    kind = resource.get("kind")
    if kind is not None and kind != "CriticalBatchSweep":
        raise ReportError(f"kind: expected CriticalBatchSweep, got {kind!r}")
    if not isinstance(resource.get("status"), Mapping) or not resource["status"]:
        raise ReportError("status: the sweep has no status yet (has the operator seen it?)")
    status = resource["status"]
    trials = status.get("trials", [])
    if not isinstance(trials, list) or not all(isinstance(t, Mapping) for t in trials):
        raise ReportError("status.trials: expected a list of trials")
    for i, t in enumerate(trials):
        for key in ("batchSize", "seed", "steps", "sfo", "value", "fid", "restarts"):
            _check_number(t.get(key), f"status.trials[{i}].{key}")
        b = t.get("batchSize")
        if b is not None and not (b == int(b) and 1 <= b <= MAX_BATCH):
            raise ReportError(f"status.trials[{i}].batchSize: expected an integer in "
                              f"1..{MAX_BATCH}, got {b!r}")
    for key in ("warnings", "conditions"):
        if not isinstance(status.get(key) or [], list):
            raise ReportError(f"status.{key}: expected a list")
    cbs = status.get("criticalBatchSize") or {}
    if not isinstance(cbs, Mapping):
        raise ReportError("status.criticalBatchSize: expected a mapping")
    for key in ("plausible", "interval", "estimates"):
        if not isinstance(cbs.get(key) or [], list):
            raise ReportError(f"status.criticalBatchSize.{key}: expected a list")
    for i, b in enumerate(cbs.get("plausible") or []):
        _check_number(b, f"status.criticalBatchSize.plausible[{i}]")
    for key in ("probabilities", "reachFraction"):
        table = cbs.get(key) or {}
        if not isinstance(table, Mapping):
            raise ReportError(f"status.criticalBatchSize.{key}: expected a mapping")
        for b, value in table.items():
            if not str(b).isdigit():
                raise ReportError(f"status.criticalBatchSize.{key}: {str(b)[:40]!r} is not a "
                                  "batch size")
            _check_number(value, f"status.criticalBatchSize.{key}.{b}")
    return resource


def _check_number(value: Any, field: str) -> None:
    """A finite number or nothing: what the report's tables and axes can show."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                              or not math.isfinite(value)):
        raise ReportError(f"{field}: expected a number, got {str(value)[:40]!r}")


def _name(resource: Mapping[str, Any]) -> str:
    meta = resource.get("metadata")
    name = str((meta if isinstance(meta, Mapping) else {}).get("name") or "sweep")
    return "".join(c if c.isprintable() else "?" for c in name)[:200]


def metric_name(resource: Mapping[str, Any]) -> str:
    """The target metric's name, from the status or else the spec (`fid` by default)."""
    for source in (resource.get("status"), resource.get("spec")):
        target = (source or {}).get("target") if isinstance(source, Mapping) else None
        name = target.get("metric") if isinstance(target, Mapping) else None
        if isinstance(name, str) and name:
            return "".join(c if c.isprintable() else "?" for c in name)[:63]
    return "fid"


def target_text(resource: Mapping[str, Any]) -> str | None:
    """`fid ≤ 50`, `accuracy ≥ 0.9`: the target as the status or the spec states it."""
    for source in (resource.get("status"), resource.get("spec")):
        target = (source or {}).get("target") if isinstance(source, Mapping) else None
        if not isinstance(target, Mapping):
            continue
        tau = _loose_number(target.get("threshold", target.get("fidThreshold")))
        if tau is not None:
            sign = "≥" if target.get("goal") == "maximize" else "≤"
            return f"{metric_name(resource)} {sign} {fmt(tau)}"
    return None


def fitted_curve(cbs: Mapping[str, Any]) -> tuple[float, float] | None:
    """(p, q) of 1/N = p + q/b from the status's fitted b* and N_min: p = 1/N_min, q = -b* p/2."""
    b_star, n_min = _loose_number(cbs.get("fitted")), _loose_number(cbs.get("nMin"))
    if b_star is None or n_min is None or n_min <= 0 or b_star <= 0:
        return None
    p = 1.0 / n_min
    return p, -b_star * p / 2.0


def trial_rows(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per trial, sorted by batch size and seed: b, seed, phase, N(b), SFO, the target
    metric's last value, reached."""
    rows = []
    for t in status.get("trials", []):
        b, steps = _loose_number(t.get("batchSize")), _loose_number(t.get("steps"))
        sfo = _loose_number(t.get("sfo"))
        if sfo is None and b is not None and steps is not None:
            sfo = b * steps
        rows.append({
            "batch_size": int(b) if b is not None else None,
            "seed": t.get("seed", 0),
            "phase": t.get("phase", "Pending"),
            "steps": steps,
            "sfo": sfo,
            "value": _loose_number(t.get("value", t.get("fid"))),
            "reached": t.get("phase") == "Reached",
            "source": t.get("source"),
            "restarts": t.get("restarts", 0),
            "reason": t.get("reason"),
        })
    return sorted(rows, key=lambda r: (r["batch_size"] or 0, r["seed"] or 0))


_warming: threading.Thread | None = None


def warm_up() -> None:
    """Load matplotlib, its PNG and SVG backends and its font in a background thread, so that
    the report drawn at a run's end does not wait for them (about 1 s of one core, spent
    while the run waits on its first trials)."""
    global _warming
    if _warming is None:
        _warming = threading.Thread(target=_draw_nothing, name="critbatch-report-warm-up")
        _warming.start()


def _draw_nothing() -> None:
    with contextlib.suppress(Exception):  # the report itself will say what is wrong
        fig = _agg_figure()(figsize=(1, 1))
        fig.text(0.5, 0.5, "b*")
        for fmt in ("png", "svg"):
            fig.savefig(io.BytesIO(), format=fmt)


def _agg_figure() -> type:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure


def figure_class() -> type:
    """matplotlib's Figure, drawn by Agg; after warm_up() has finished (matplotlib is not
    thread-safe)."""
    if _warming is not None:
        _warming.join()
    return _agg_figure()


def plot(resource: Mapping[str, Any]):  # -> matplotlib.figure.Figure
    """Two panels over batch size (log 2): N(b) and SFO(b), points per trial, fitted curve."""
    Figure = figure_class()
    status = resource["status"]
    cbs = status.get("criticalBatchSize") or {}
    rows = [r for r in trial_rows(status) if r["batch_size"] and r["steps"] is not None]
    fig = Figure(figsize=(15, 4.6), layout="constrained")
    ax_n, ax_s, ax_p = fig.subplots(1, 3, width_ratios=(1, 1, 0.8))
    grid = sorted({r["batch_size"] for r in trial_rows(status) if r["batch_size"]})
    for phase, (marker, filled, colour, label) in _STYLE.items():
        pts = [r for r in rows if r["phase"] == phase]
        if not pts:
            continue
        xs = [r["batch_size"] for r in pts]
        style = ({"color": colour} if marker == "x" else
                 {"facecolors": colour if filled else "none", "edgecolors": colour})
        for ax, ys in ((ax_n, [r["steps"] for r in pts]), (ax_s, [r["sfo"] for r in pts])):
            ax.scatter(xs, ys, marker=marker, s=42, label=label, zorder=3, **style)
    pq = fitted_curve(cbs)
    if pq is not None and grid:
        p, q = pq
        lo, hi = grid[0] / 1.5, grid[-1] * 1.5
        start = max(lo, -q / p * 1.02)  # N is finite only where p + q/b > 0
        if start < hi:
            bs = [start * (hi / start) ** (i / 199) for i in range(200)]
            ns = [1.0 / (p + q / b) for b in bs]
            cap = 3.0 * max((r["steps"] for r in rows), default=math.inf)
            keep = [i for i, n in enumerate(ns) if n <= cap]  # not up the pole at b = B/K
            bs, ns = [bs[i] for i in keep], [ns[i] for i in keep]
            ax_n.plot(bs, ns, "-", color="tab:green", lw=1.5, label="fit N = A·b/(K·b − B)")
            ax_s.plot(bs, [n * b for n, b in zip(ns, bs, strict=True)], "-",
                      color="tab:green", lw=1.5, label="fit SFO = N·b")
            ax_n.axhline(1.0 / p, color="tab:green", ls=":", lw=1,
                         label=f"N_min = {fmt(1.0 / p)}")
    measured, fitted = _loose_number(cbs.get("measured")), _loose_number(cbs.get("fitted"))
    if measured is not None and _on_axis(measured, grid):
        ax_s.axvline(measured, color="tab:blue", ls="-", lw=1.2,
                     label=f"b* measured = {fmt(measured)}")
    if fitted is not None and _on_axis(fitted, grid):
        ax_s.axvline(fitted, color="tab:green", ls="--", lw=1.2,
                     label=f"b* fitted = {fmt(fitted)}")
        _span(ax_s, cbs.get("interval"), grid, "tab:green", "interval")
    predicted = _loose_number(cbs.get("predicted"))
    if predicted is not None and _on_axis(predicted, grid):
        ax_s.axvline(predicted, color="tab:purple", ls=":", lw=1.2,
                     label=f"b* predicted = {fmt(predicted)}")
        _span(ax_s, cbs.get("predictedInterval"), grid, "tab:purple", "predicted")
    plain = _plain_log_formatter()
    for ax, ylabel in ((ax_n, "N(b): steps to reach τ"), (ax_s, "SFO(b) = N(b)·b")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(plain(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(plain(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        if grid:
            ax.set_xticks(grid, [str(g) for g in grid])
        ax.set_xlabel("batch size b")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    _plot_probabilities(ax_p, cbs, grid)
    target = target_text(resource)
    name = _name(resource).replace("$", r"\$")  # a `$` would start matplotlib's math text
    fig.suptitle(f"{name}: critical batch size"
                 + (f" (target {target})" if target is not None else ""))
    if cbs.get("notIdentifiable"):
        why = str(cbs["notIdentifiable"]).removeprefix("fit: ")
        ax_s.set_title(textwrap.fill(f"fit not identifiable: {why}", 70), fontsize=8,
                       color="tab:red")
    return fig


def _span(ax: Any, interval: Any, grid: Sequence[int], colour: str, name: str) -> None:
    """A status's interval as a shaded band, where both ends can be drawn."""
    ends = _ends(interval)
    if ends is not None and all(_on_axis(x, grid) for x in ends):
        ax.axvspan(*ends, color=colour, alpha=0.12, label=f"{name} {fmt(ends[0])}–{fmt(ends[1])}")


def _on_axis(x: float, grid: Sequence[int]) -> bool:
    """Whether a batch size can be drawn on the log axis: one far beyond the grid (a predicted
    b* of 1e305) would stretch the axis past what it can draw; the summary still gives it."""
    lo, hi = (grid[0], grid[-1]) if grid else (1, 1 << 20)
    return lo / 1e3 <= x <= hi * 1e3


def _plot_probabilities(ax: Any, cbs: Mapping[str, Any], grid: Sequence[int]) -> None:
    """Bars: each tested batch size's probability of being the SFO argmin; the plausible set
    filled, the rest hollow."""
    probs = cbs.get("probabilities") or {}
    plausible = set(cbs.get("plausible") or [])
    sizes = sorted({*grid, *(int(b) for b in probs if str(b).isdigit())})
    labels = [str(b) for b in sizes]
    values = [_loose_number(probs.get(str(b))) or 0.0 for b in sizes]
    bars = ax.bar(labels, values, color=["tab:blue" if b in plausible else "none" for b in sizes],
                  edgecolor="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=8)
    level = _loose_number(cbs.get("confidence"))
    state = "resolved" if cbs.get("resolved") else "unresolved"
    ax.set_title(f"plausible set at {level:.0%} ({state}), filled" if level is not None
                 else "plausible set, filled", fontsize=9)
    ax.set_ylim(0, 1)
    ax.set_xlabel("batch size b")
    ax.set_ylabel("P(b is the SFO argmin)")
    ax.grid(True, axis="y", alpha=0.3)


def _plain_log_formatter():  # -> type[matplotlib.ticker.LogFormatter]
    """Log-axis tick labels as plain numbers (2000, not 2×10³)."""
    from matplotlib.ticker import LogFormatter

    class Plain(LogFormatter):
        def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
            return fmt(x, 3)

    return Plain


def _hardware_lines(status: Mapping[str, Any]) -> list[str]:
    """Where the trials ran: one line when they agree, one per kind when they do not."""
    where: dict[str, list[str]] = {}
    for t in status.get("trials") or []:
        if isinstance(t, Mapping) and isinstance(t.get("hardware"), str):
            where.setdefault(t["hardware"], []).append(f"{t.get('batchSize')}/s{t.get('seed')}")
    if not where:
        return []
    if len(where) == 1:
        return ["", f"Every trial ran on: {next(iter(where))}."]
    return ["", "**The trials ran on different hardware** (N(b) may differ for that reason):",
            ""] + [f"- {kind}: b/seed {', '.join(keys)}" for kind, keys in where.items()]


def _answer_lines(cbs: Mapping[str, Any]) -> list[str]:
    """The headline answer: the most probable b*, the plausible set, each batch size's
    probability and reach fraction."""
    best = cbs.get("mostProbable")
    if best is None:
        return ["- **b\\***: no answer yet (no trial reached τ)"]
    level = _loose_number(cbs.get("confidence"))
    plausible = ", ".join(fmt(b) for b in cbs.get("plausible") or [])
    state = "resolved" if cbs.get("resolved") else "**not resolved**"
    probs = cbs.get("probabilities") or {}
    reach = cbs.get("reachFraction") or {}
    lines = [f"- **b\\* = {fmt(best)}**, the most probable SFO argmin among the tested batch "
             f"sizes ({state}; plausible set at {fmt(level and level * 100)} %: {plausible})", "",
             "| b | P(b is b*) | seeds that reached τ |", "|---:|---:|---:|"]
    for b in sorted({*map(int, probs), *map(int, reach)}):
        frac = _loose_number(reach.get(str(b)))
        lines.append(f"| {b} | {fmt(_loose_number(probs.get(str(b))) or 0.0, 3)} | "
                     f"{fmt(frac * 100, 3) + ' %' if frac is not None else '—'} |")
    return [*lines, ""]


def summary_markdown(resource: Mapping[str, Any], plot_name: str | None = PNG_NAME) -> str:
    """The short Markdown summary: the trials' table, the answer and how sure, b* measured and
    fitted, the estimates."""
    status = resource["status"]
    cbs = status.get("criticalBatchSize") or {}
    target = target_text(resource)
    lines = [f"# Critical batch size: {_name(resource)}", ""]
    done, total = status.get("trialsDone"), status.get("trialsTotal")
    head = f"Phase **{status.get('phase', 'Unknown')}**"
    if done is not None and total is not None:
        head += f", {done}/{total} trials done"
    if target is not None:
        head += f", target {target}"
    lines += [head + ".", ""]
    lines += [f"| b | seed | phase | N(b) | SFO | {metric_name(resource)} | reached | source |",
              "|---:|---:|---|---:|---:|---:|---|---|"]
    for r in trial_rows(status):
        lines.append(
            f"| {fmt(r['batch_size'])} | {r['seed']} | {r['phase']} | {fmt(r['steps'])} | "
            f"{fmt(r['sfo'])} | {fmt(r['value'])} | {'yes' if r['reached'] else 'no'} | "
            f"{r['source'] or '—'} |"
        )
    lines.append("")
    lines.append("Censored and pruned trials are lower bounds (N(b) > steps), not measurements.")
    lines += _hardware_lines(status)
    lines.append("")
    lines += _answer_lines(cbs)
    measured = cbs.get("measured")
    lines.append(
        f"- **b\\* measured** (least mean SFO over batch sizes whose seeds all reached τ; "
        f"descriptive): {fmt(measured)}"
        + (f", SFO {fmt(cbs['measuredSfo'])}" if _loose_number(cbs.get("measuredSfo")) else "")
    )
    if _loose_number(cbs.get("fitted")) is not None:
        text = (f"- **b\\* fitted** (N(b) = A·b/(K·b − B), b\\* = 2B/K, posterior median "
                f"with censored trials): {fmt(cbs['fitted'])}")
        if interval := _pair(cbs.get("interval")):
            text += f", 95 % credible interval {interval}"
        if _loose_number(cbs.get("nMin")) is not None:
            text += f"; N_min = {fmt(cbs['nMin'])} steps"
        lines.append(text)
    else:
        why = cbs.get("notIdentifiable") or "not enough trials reached τ yet"
        lines.append(f"- **b\\* fitted**: not identifiable: {why}")
    if _loose_number(cbs.get("predicted")) is not None:
        grid = cbs.get("predictedGrid")
        text = (f"- **b\\* predicted** (Proposition 3.4, reference noise ratio): "
                f"{fmt(cbs['predicted'])}" + (f" (grid: {grid})" if grid else ""))
        if interval := _pair(cbs.get("predictedInterval")):
            text += f", interval {interval} from the reference's fitted b\\*'s 95 % interval"
        lines.append(text)
    if _loose_number(cbs.get("noiseRatio")) is not None:
        text = f"- noise ratio σ²/ε³ = {fmt(cbs['noiseRatio'])}"
        if interval := _pair(cbs.get("noiseRatioInterval")):
            text += f", interval {interval} from the fitted b\\*'s 95 % interval"
        lines.append(text)
    if _loose_number(status.get("sfoSaved")):
        lines.append(f"- SFO saved by pruning (upper bound): {fmt(status['sfoSaved'])}")
    estimates = [e for e in cbs.get("estimates") or [] if isinstance(e, Mapping)]
    if estimates:
        lines += ["", "## Estimates for other settings (Proposition 3.4)", "",
                  "| target | optimizer | α_G | β1 | β2 | b* estimate | interval | grid |",
                  "|---|---|---:|---:|---:|---:|---|---:|"]
        for i, e in enumerate(estimates):
            lines.append(
                f"| {e.get('name') or i + 1} | {e.get('optimizer', '—')} | "
                f"{fmt(e.get('learningRate'))} | {fmt(e.get('beta1'))} | {fmt(e.get('beta2'))} | "
                f"{fmt(e.get('batchSize'))} | {_pair(e.get('batchSizeInterval')) or '—'} | "
                f"{fmt(e.get('gridBatchSize'))} |"
            )
    warnings = [str(w) for w in status.get("warnings") or []]
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in warnings]
    if plot_name:
        lines += ["", f"![N(b) and SFO(b)]({plot_name})"]
    return "\n".join(lines) + "\n"


def render(resource: Mapping[str, Any], out_dir: Path) -> ReportFiles:
    """Write the PNG, the SVG and the Markdown summary into `out_dir`.

    Each file is written beside its name and then renamed over it: a file of that name that
    is a symbolic link is replaced, never followed out of `out_dir`, and a write that fails (a
    full disk) leaves the previous report whole and raises OutputError.
    """
    check_resource(resource)
    out_dir = Path(out_dir)
    files = ReportFiles(out_dir / PNG_NAME, out_dir / SVG_NAME, out_dir / MARKDOWN_NAME)
    fig = plot(resource)
    markdown = summary_markdown(resource, PNG_NAME)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(files.png, lambda f: fig.savefig(f, dpi=120, format="png"))
        atomic_write(files.svg, lambda f: fig.savefig(f, format="svg"))
        atomic_write(files.markdown, markdown)
    except OSError as exc:
        raise OutputError(f"{exc.filename or out_dir}: cannot write the report: "
                          f"{exc.strerror or exc}") from None
    return files
