"""A campaign's report: one table of its sweeps' answers, each prediction of Proposition 3.4
said to have held or missed in words, and a plot of every sweep's plausible b* beside its
prediction; Markdown for a pull request or a lab notebook."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from critbatch.campaign import campaign_rows
from critbatch.errors import OutputError
from critbatch.files import atomic_write
from critbatch.report import figure_class, fmt

MARKDOWN_NAME = "campaign.md"
PNG_NAME = "campaign.png"
SVG_NAME = "campaign.svg"


def _cell(text: Any) -> str:
    """Text that stays inside one Markdown table cell and one line."""
    return "".join(c if c.isprintable() else "?" for c in str(text)).replace("|", "\\|")


def _printable(text: Any, limit: int) -> str:
    return "".join(c if c.isprintable() else "?" for c in str(text))[:limit]


def _label(text: Any, limit: int) -> str:
    """Text for the plot: printable, bounded, and with `$` escaped (not matplotlib's math)."""
    return _printable(text, limit).replace("$", r"\$")


def _set(sizes: Sequence[int]) -> str:
    return "{" + ", ".join(map(str, sizes)) + "}"


def _setting(row: Mapping[str, Any]) -> str:
    return row["optimizer"] or "optimizer unknown"


def _prediction_line(row: Mapping[str, Any]) -> str:
    """`rms (rmsprop): predicted 9.5 (grid 8), most probable 4, plausible {4}: the prediction
    missed`: what was predicted, what was found, and the verdict."""
    head = f"- **{_cell(row['sweep'])}** ({_cell(_setting(row))}"
    head += f", from {_cell(row['reference'])}): " if row["reference"] else "): "
    text = f"predicted {fmt(row['predicted'])}"
    if row["predictedGrid"] is not None:
        text += f" (grid {row['predictedGrid']})"
    if row["mostProbable"] is None:
        return head + text + ", no answer yet: the prediction cannot be checked yet."
    text += f", most probable {row['mostProbable']}, plausible {_set(row['plausible'])}"
    held = row["predictionHeld"]
    if held is None:
        verdict = "no grid batch size to check the prediction against"
    elif held and row["predictedGrid"] != row["mostProbable"]:
        verdict = (f"the prediction held only as plausible, **the most probable b\\* is "
                   f"{row['mostProbable']}**")
    else:
        verdict = "the prediction held" if held else "**the prediction missed**"
    return f"{head}{text}: {verdict}.{_fit(row)}"


def _interval(ends: Sequence[float] | None) -> str:
    return f"[{fmt(ends[0])}, {fmt(ends[1])}]" if ends else "—"


def _fit(row: Mapping[str, Any]) -> str:
    """The prediction against the fitted b*'s credible interval, in words."""
    fits = row["predictionFits"]
    if fits is None:
        return ""
    said = (f"predicted {_interval(row['predictedInterval'])}" if row["predictedInterval"]
            else f"predicted {fmt(row['predicted'])}")
    verdict = "they overlap" if fits else "**they do not overlap**"
    return (f" Against the fitted b\\* (the model N(b), stalls aside): {said}, fitted "
            f"{fmt(row['fitted'])} {_interval(row['fittedInterval'])}: {verdict}.")


def _sureness_line(row: Mapping[str, Any]) -> str:
    """How sure a sweep's answer is: resolved or not, and its plausible set."""
    head = f"- **{_cell(row['sweep'])}**: "
    if row["mostProbable"] is None:
        done = (f", {fmt(row['trialsDone'])}/{fmt(row['trialsTotal'])} trials done"
                if row["trialsTotal"] is not None else "")
        return head + f"no answer yet ({_cell(row['phase'])}{done})."
    level = (f" at {fmt(row['confidence'] * 100)} %" if row["confidence"] is not None else "")
    state = "resolved" if row["resolved"] else "**not resolved**"
    return (head + f"b* = {row['mostProbable']}, {state} (plausible set{level}: "
            f"{_set(row['plausible'])}).")


_COLUMNS = ("sweep", "phase", "optimizer", "α_G", "β1", "β2", "reference", "b* most probable",
            "plausible", "resolved", "measured", "fitted", "predicted (grid)", "prediction",
            "vs fit", "trials", "SFO spent", "SFO saved")
_RIGHT = {"α_G", "β1", "β2", "b* most probable", "measured", "fitted", "predicted (grid)",
          "trials", "SFO spent", "SFO saved"}


def table_cells(row: Mapping[str, Any]) -> list[str]:
    """A row as the table's cells, in `_COLUMNS` order (also the CLI's table)."""
    predicted = fmt(row["predicted"])
    if row["predictedInterval"]:
        predicted += f" {_interval(row['predictedInterval'])}"
    if row["predictedGrid"] is not None:
        predicted += f" ({row['predictedGrid']})"
    fits = {True: "overlaps", False: "apart", None: "—"}[row["predictionFits"]]
    fitted = fmt(row["fitted"])
    if row["fittedInterval"]:
        fitted += f" {_interval(row['fittedInterval'])}"
    verdict = {True: "held", False: "missed", None: "—"}[row["predictionHeld"]]
    if row["predictionHeld"] and row["predictedGrid"] != row["mostProbable"]:
        verdict = "held, not most probable"
    trials = (f"{fmt(row['trialsDone'])}/{fmt(row['trialsTotal'])}"
              if row["trialsTotal"] is not None else "—")
    resolved = {True: "yes", False: "no", None: "—"}[row["resolved"]]
    return [_cell(row["sweep"]), _cell(row["phase"]), _cell(row["optimizer"] or "—"),
            fmt(row["learningRate"]), fmt(row["beta1"]), fmt(row["beta2"]),
            _cell(row["reference"] or "—"), fmt(row["mostProbable"]),
            _set(row["plausible"]) if row["plausible"] else "—", resolved,
            fmt(row["measured"]), fitted, predicted, verdict, fits, trials,
            fmt(row["sfoSpent"]), fmt(row["sfoSaved"])]


def terminal_table(name: str, rows: Sequence[Mapping[str, Any]]):  # -> rich Table
    """The campaign's rows for a terminal of 80 columns: each sweep's answer and how sure,
    its prediction and both verdicts (campaign.md has the rest); a missed prediction in red."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(f"Campaign {_printable(name, 200)}"), title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column, right, fold in (("sweep", False, True), ("b*", True, False),
                                ("plausible", False, True), ("predicted", True, False),
                                ("prediction", False, True), ("vs fit", False, False),
                                ("SFO spent", True, False)):
        table.add_column(column, justify="right" if right else "left", overflow="fold",
                         no_wrap=not fold)
    for row in rows:
        cells = dict(zip(_COLUMNS, table_cells(row), strict=True))
        predicted = fmt(row["predicted"]) + (f" ({row['predictedGrid']})"
                                             if row["predictedGrid"] is not None else "")
        table.add_row(*(Text(c.replace("\\|", "|")) for c in (
            cells["sweep"], cells["b* most probable"], cells["plausible"],
            predicted if row["predicted"] is not None else "—", cells["prediction"],
            cells["vs fit"], cells["SFO spent"])),
            style="red" if row["predictionHeld"] is False else None)
    return table


def campaign_markdown(name: str, resources: Sequence[Mapping[str, Any]],
                      plot_name: str | None = PNG_NAME) -> str:
    """The campaign's table, then each prediction and each answer's certainty in words."""
    rows = campaign_rows(resources)
    phases = Counter(r["phase"] for r in rows)
    predicted = [r for r in rows if r["predicted"] is not None]
    verdicts = Counter(r["predictionHeld"] for r in predicted)
    fits = Counter(r["predictionFits"] for r in predicted)
    lines = [f"# Campaign: {_cell(name)}", ""]
    head = (f"{len(rows)} sweep{'s' if len(rows) != 1 else ''}: "
            + ", ".join(f"{n} {_cell(p)}" for p, n in sorted(phases.items())) + ".")
    if predicted:
        head += (f" {len(predicted)} b* predicted from a reference (Proposition 3.4): "
                 f"{verdicts[True]} held, {verdicts[False]} missed, "
                 f"{verdicts[None]} not yet checkable; against the fitted b*, "
                 f"{fits[True]} overlap, {fits[False]} apart.")
    spent = math.fsum(r["sfoSpent"] for r in rows)
    head += f" SFO spent in all: {fmt(spent)}."
    lines += [head, ""]
    lines += ["| " + " | ".join(_COLUMNS) + " |",
              "|" + "|".join("---:" if c in _RIGHT else "---" for c in _COLUMNS) + "|"]
    lines += ["| " + " | ".join(table_cells(r)) + " |" for r in rows]
    lines += ["", "The plausible set holds the batch sizes that may be the SFO argmin at the "
              "sweep's confidence; a sweep is resolved once one batch size holds it alone. A "
              "prediction held when its grid batch size is in the plausible set (and only as "
              "plausible when another batch size is more probable). \"vs fit\" sets the "
              "prediction's interval (Proposition 3.4 from each end of the reference's fitted "
              "b* interval) against this sweep's fitted b* and its 95 % credible interval: "
              "both are of the model N(b), which stalled seeds do not move, so this judges "
              "the theory where the plausible set judges the batch size to pick."]
    if predicted:
        lines += ["", "## Predictions (Proposition 3.4)", ""]
        lines += [_prediction_line(r) for r in predicted]
    lines += ["", "## How sure each answer is", ""]
    lines += [_sureness_line(r) for r in rows]
    if plot_name:
        lines += ["", f"![b* per sweep: plausible set, most probable, predicted]({plot_name})"]
    return "\n".join(lines) + "\n"


def _on_axis(y: float, lo: float, hi: float) -> bool:
    """Whether a value can be drawn: one far beyond every batch size (a prediction of 1e305)
    would stretch the log axis past what it can draw; the table still gives it."""
    return lo / 1e3 <= y <= hi * 1e3


def campaign_plot(name: str, resources: Sequence[Mapping[str, Any]]):  # -> Figure
    """Per sweep (x), on a log2 batch-size axis: the plausible set as a range (blue when
    resolved, orange when not) with its members ticked, the most probable b* as a dot, the
    fitted b* as a grey square with its interval, the Proposition 3.4 prediction as a diamond
    with its interval (green held, red missed, purple unchecked)."""
    Figure = figure_class()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = campaign_rows(resources)
    known = [b for r in rows for b in (*r["plausible"], r["mostProbable"], r["measured"])
             if b is not None]
    lo, hi = (min(known), max(known)) if known else (1, 1 << 10)
    fig = Figure(figsize=(max(6.0, 1.0 * len(rows) + 3.0), 4.8), layout="constrained")
    ax = fig.subplots()
    ys: list[float] = []
    for x, r in enumerate(rows):
        if r["plausible"]:
            low, high = r["plausible"][0] / 2**0.3, r["plausible"][-1] * 2**0.3
            ax.bar(x, high - low, bottom=low, width=0.5, zorder=1, alpha=0.3,
                   color="tab:blue" if r["resolved"] else "tab:orange")
            ax.scatter([x] * len(r["plausible"]), r["plausible"], marker="_", s=300,
                       color="tab:blue" if r["resolved"] else "tab:orange", zorder=2)
            ys += [low, high]
        if r["mostProbable"] is not None:
            ax.scatter([x], [r["mostProbable"]], marker="o", s=60, color="tab:blue", zorder=3)
            ys.append(r["mostProbable"])
        fitted = r["fittedInterval"]
        if r["fitted"] is not None and fitted and all(_on_axis(y, lo, hi) for y in fitted):
            ax.vlines(x - 0.12, *fitted, color="tab:gray", lw=1.5, zorder=3)
            ax.scatter([x - 0.12], [r["fitted"]], marker="s", s=30, color="tab:gray", zorder=4)
            ys += fitted
        if r["predicted"] is not None and _on_axis(r["predicted"], lo, hi):
            colour = {True: "tab:green", False: "tab:red", None: "tab:purple"}[
                r["predictionHeld"]]
            ax.scatter([x + 0.12], [r["predicted"]], marker="D", s=55, facecolors="none",
                       edgecolors=colour, linewidths=1.8, zorder=4)
            ys.append(r["predicted"])
            ends = r["predictedInterval"]
            if ends and all(_on_axis(y, lo, hi) for y in ends):
                ax.vlines(x + 0.12, *ends, color=colour, lw=1.5, zorder=3)
                ys += ends
    ax.set_yscale("log", base=2)
    bottom, top = (min(ys), max(ys)) if ys else (lo, hi)
    k0, k1 = math.floor(math.log2(bottom)), math.ceil(math.log2(top))
    if k1 - k0 < 2:
        k0, k1 = k0 - 1, k1 + 1
    ax.set_ylim(2.0**k0 / 1.2, 2.0**k1 * 1.2)
    step = max(1, (k1 - k0) // 12)
    ticks = [2**k for k in range(k0, k1 + 1, step)]
    ax.set_yticks(ticks, [fmt(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xticks(range(len(rows)), [_label(r["sweep"], 40) for r in rows],
                  rotation=30 if len(rows) > 4 else 0, ha="right" if len(rows) > 4 else "center")
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("sweep")
    ax.set_ylabel("batch size b (log 2)")
    ax.grid(True, axis="y", alpha=0.3)
    shown = {("resolved" if r["resolved"] else "unresolved") for r in rows if r["plausible"]}
    shown |= {"best"} if any(r["mostProbable"] is not None for r in rows) else set()
    shown |= {"fitted"} if any(r["fittedInterval"] for r in rows) else set()
    shown |= {r["predictionHeld"] for r in rows if r["predicted"] is not None}
    legend = [
        ("resolved", Patch(color="tab:blue", alpha=0.3, label="plausible set, resolved")),
        ("unresolved", Patch(color="tab:orange", alpha=0.3,
                             label="plausible set, not resolved")),
        ("best", Line2D([], [], marker="o", ls="", color="tab:blue", label="b* most probable")),
        ("fitted", Line2D([], [], marker="s", color="tab:gray",
                          label="b* fitted, 95 % interval")),
        *((held, Line2D([], [], marker="D", ls="", mfc="none", mec=colour, label=label))
          for held, colour, label in ((True, "tab:green", "predicted (Prop. 3.4), held"),
                                      (False, "tab:red", "predicted (Prop. 3.4), missed"),
                                      (None, "tab:purple", "predicted, not checkable"))),
    ]
    handles = [h for key, h in legend if key in shown]
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"Campaign {_label(name, 80)}: critical batch size per sweep")
    if not rows or all(r["mostProbable"] is None for r in rows):
        ax.set_title("no sweep has an answer yet", fontsize=9)
    return fig


def write_campaign_report(out_dir: Path, name: str,
                          resources: Sequence[Mapping[str, Any]]) -> list[Path]:
    """Write campaign.md, campaign.png and campaign.svg into `out_dir` and return their paths.

    The input is checked before anything is written. Each file replaces its name whole: a
    link of that name is replaced, never followed, and a failed write (a full disk) leaves
    the previous file and raises OutputError.
    """
    out_dir = Path(out_dir)
    markdown = campaign_markdown(name, resources, PNG_NAME)
    fig = campaign_plot(name, resources)
    files = [out_dir / MARKDOWN_NAME, out_dir / PNG_NAME, out_dir / SVG_NAME]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(files[0], markdown)
        atomic_write(files[1], lambda f: fig.savefig(f, dpi=120, format="png"))
        atomic_write(files[2], lambda f: fig.savefig(f, format="svg"))
    except OSError as exc:
        raise OutputError(f"{exc.filename or out_dir}: cannot write the campaign report: "
                          f"{exc.strerror or exc}") from None
    return files
