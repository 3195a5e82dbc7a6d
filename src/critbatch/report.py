"""A sweep's report: a plot of N(b) and SFO(b) with the fitted curve, and a Markdown summary.

Input is the CriticalBatchSweep resource as plain data (metadata, spec, status in the CRD's
camelCase), so a local run (`critbatch run`) and a cluster sweep (`critbatch report`) render
the same report from the same status.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from critbatch.errors import InputError

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


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def fmt(value: Any, digits: int = 4) -> str:
    """A number for humans: integers without a decimal point, others to `digits` significant."""
    x = _num(value)
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
    trials = resource["status"].get("trials", [])
    if not isinstance(trials, list) or not all(isinstance(t, Mapping) for t in trials):
        raise ReportError("status.trials: expected a list of trials")
    return resource


def _name(resource: Mapping[str, Any]) -> str:
    return str((resource.get("metadata") or {}).get("name") or "sweep")


def _threshold(resource: Mapping[str, Any]) -> float | None:
    return _num(((resource.get("spec") or {}).get("target") or {}).get("fidThreshold"))


def fitted_curve(cbs: Mapping[str, Any]) -> tuple[float, float] | None:
    """(p, q) of 1/N = p + q/b from the status's fitted b* and N_min: p = 1/N_min, q = -b* p/2."""
    b_star, n_min = _num(cbs.get("fitted")), _num(cbs.get("nMin"))
    if b_star is None or n_min is None or n_min <= 0 or b_star <= 0:
        return None
    p = 1.0 / n_min
    return p, -b_star * p / 2.0


def trial_rows(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per trial, sorted by batch size and seed: b, seed, phase, N(b), SFO, FID, reached."""
    rows = []
    for t in status.get("trials", []):
        b, steps = _num(t.get("batchSize")), _num(t.get("steps"))
        sfo = _num(t.get("sfo"))
        if sfo is None and b is not None and steps is not None:
            sfo = b * steps
        rows.append({
            "batch_size": int(b) if b is not None else None,
            "seed": t.get("seed", 0),
            "phase": t.get("phase", "Pending"),
            "steps": steps,
            "sfo": sfo,
            "fid": _num(t.get("fid")),
            "reached": t.get("phase") == "Reached",
            "source": t.get("source"),
            "restarts": t.get("restarts", 0),
            "reason": t.get("reason"),
        })
    return sorted(rows, key=lambda r: (r["batch_size"] or 0, r["seed"] or 0))


def plot(resource: Mapping[str, Any]):  # -> matplotlib.figure.Figure
    """Two panels over batch size (log 2): N(b) and SFO(b), points per trial, fitted curve."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    status = resource["status"]
    cbs = status.get("criticalBatchSize") or {}
    rows = [r for r in trial_rows(status) if r["batch_size"] and r["steps"] is not None]
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    ax_n, ax_s = fig.subplots(1, 2)
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
    measured, fitted = _num(cbs.get("measured")), _num(cbs.get("fitted"))
    if measured is not None:
        ax_s.axvline(measured, color="tab:blue", ls="-", lw=1.2,
                     label=f"b* measured = {fmt(measured)}")
    if fitted is not None:
        ax_s.axvline(fitted, color="tab:green", ls="--", lw=1.2,
                     label=f"b* fitted = {fmt(fitted)}")
        interval = cbs.get("interval")
        if isinstance(interval, Sequence) and len(interval) == 2:
            lo_i, hi_i = _num(interval[0]), _num(interval[1])
            if lo_i is not None and hi_i is not None:
                ax_s.axvspan(lo_i, hi_i, color="tab:green", alpha=0.12,
                             label=f"interval {fmt(lo_i)}–{fmt(hi_i)}")
    predicted = _num(cbs.get("predicted"))
    if predicted is not None:
        ax_s.axvline(predicted, color="tab:purple", ls=":", lw=1.2,
                     label=f"b* predicted = {fmt(predicted)}")
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
    tau = _threshold(resource)
    fig.suptitle(f"{_name(resource)}: critical batch size"
                 + (f" (FID threshold τ = {fmt(tau)})" if tau is not None else ""))
    if cbs.get("notIdentifiable"):
        why = str(cbs["notIdentifiable"]).removeprefix("fit: ")
        ax_s.set_title(textwrap.fill(f"fit not identifiable: {why}", 70), fontsize=8,
                       color="tab:red")
    return fig


def _plain_log_formatter():  # -> type[matplotlib.ticker.LogFormatter]
    """Log-axis tick labels as plain numbers (2000, not 2×10³)."""
    from matplotlib.ticker import LogFormatter

    class Plain(LogFormatter):
        def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
            return fmt(x, 3)

    return Plain


def summary_markdown(resource: Mapping[str, Any], plot_name: str | None = PNG_NAME) -> str:
    """The short Markdown summary: the trials' table, b* measured and fitted, the estimates."""
    status = resource["status"]
    cbs = status.get("criticalBatchSize") or {}
    tau = _threshold(resource)
    lines = [f"# Critical batch size: {_name(resource)}", ""]
    done, total = status.get("trialsDone"), status.get("trialsTotal")
    head = f"Phase **{status.get('phase', 'Unknown')}**"
    if done is not None and total is not None:
        head += f", {done}/{total} trials done"
    if tau is not None:
        head += f", FID threshold τ = {fmt(tau)}"
    lines += [head + ".", ""]
    lines += ["| b | seed | phase | N(b) | SFO | FID | reached | source |",
              "|---:|---:|---|---:|---:|---:|---|---|"]
    for r in trial_rows(status):
        lines.append(
            f"| {fmt(r['batch_size'])} | {r['seed']} | {r['phase']} | {fmt(r['steps'])} | "
            f"{fmt(r['sfo'])} | {fmt(r['fid'])} | {'yes' if r['reached'] else 'no'} | "
            f"{r['source'] or '—'} |"
        )
    lines.append("")
    lines.append("Censored and pruned trials are lower bounds (N(b) > steps), not measurements.")
    lines.append("")
    measured = cbs.get("measured")
    lines.append(
        f"- **b\\* measured** (least SFO on the grid): {fmt(measured)}"
        + (f", SFO {fmt(cbs['measuredSfo'])}" if _num(cbs.get("measuredSfo")) else "")
    )
    if _num(cbs.get("fitted")) is not None:
        text = f"- **b\\* fitted** (N(b) = A·b/(K·b − B), b\\* = 2B/K): {fmt(cbs['fitted'])}"
        interval = cbs.get("interval")
        if isinstance(interval, Sequence) and len(interval) == 2:
            text += f", interval [{fmt(interval[0])}, {fmt(interval[1])}]"
        if _num(cbs.get("nMin")) is not None:
            text += f"; N_min = {fmt(cbs['nMin'])} steps"
        lines.append(text)
    else:
        why = cbs.get("notIdentifiable") or "not enough trials reached τ yet"
        lines.append(f"- **b\\* fitted**: not identifiable: {why}")
    if _num(cbs.get("predicted")) is not None:
        grid = cbs.get("predictedGrid")
        lines.append(f"- **b\\* predicted** (Proposition 3.4, reference noise ratio): "
                     f"{fmt(cbs['predicted'])}" + (f" (grid: {grid})" if grid else ""))
    if _num(cbs.get("noiseRatio")) is not None:
        lines.append(f"- noise ratio σ²/ε³ = {fmt(cbs['noiseRatio'])}")
    if _num(status.get("sfoSaved")):
        lines.append(f"- SFO saved by pruning (upper bound): {fmt(status['sfoSaved'])}")
    estimates = [e for e in cbs.get("estimates") or [] if isinstance(e, Mapping)]
    if estimates:
        lines += ["", "## Estimates for other settings (Proposition 3.4)", "",
                  "| target | optimizer | α_G | β1 | β2 | b* estimate | grid |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for i, e in enumerate(estimates):
            lines.append(
                f"| {e.get('name') or i + 1} | {e.get('optimizer', '—')} | "
                f"{fmt(e.get('learningRate'))} | {fmt(e.get('beta1'))} | {fmt(e.get('beta2'))} | "
                f"{fmt(e.get('batchSize'))} | {fmt(e.get('gridBatchSize'))} |"
            )
    warnings = [str(w) for w in status.get("warnings") or []]
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in warnings]
    if plot_name:
        lines += ["", f"![N(b) and SFO(b)]({plot_name})"]
    return "\n".join(lines) + "\n"


def render(resource: Mapping[str, Any], out_dir: Path) -> ReportFiles:
    """Write the PNG, the SVG and the Markdown summary into `out_dir`."""
    check_resource(resource)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(out_dir / PNG_NAME, out_dir / SVG_NAME, out_dir / MARKDOWN_NAME)
    fig = plot(resource)
    fig.savefig(files.png, dpi=120)
    fig.savefig(files.svg)
    files.markdown.write_text(summary_markdown(resource, PNG_NAME))
    return files
