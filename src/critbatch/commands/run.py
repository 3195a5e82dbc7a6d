"""`critbatch run SWEEP.yaml` or `critbatch run DIR/`: run a sweep, or a campaign's sweeps one
after another, on this machine (thin wiring)."""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from critbatch import report
from critbatch.campaign import campaign_rows
from critbatch.campaign_report import MARKDOWN_NAME, terminal_table
from critbatch.commands import silence_stdout
from critbatch.errors import InputError
from critbatch.local.campaign import (
    CampaignRun,
    holds_campaign_run,
    is_plain_sweep_file,
    load_campaign,
)
from critbatch.local.options import MetricsMode, RunError, RunOptions
from critbatch.local.progress import failure_reason, headline, make_progress
from critbatch.local.rundir import load_manifest
from critbatch.local.runner import LocalRun
from critbatch.spec import parse_sweep

HELP = "run a sweep's trials as local processes and write its status and report"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run", help=HELP, description=HELP + ". The same CriticalBatchSweep manifest as the "
        "cluster's; trials run as local trainer processes, `parallelism` at a time. A "
        "directory (or several manifests) is a campaign: its sweeps run one after another, "
        "references first, each into OUT/<sweep name>/, then the campaign report.",
        epilog="exit codes: 0 the sweep (every sweep of a campaign) succeeded; 1 it did not "
        "(the last line gives the reason) or its output could not be written; 2 bad input; "
        "130 interrupted (Ctrl-C, SIGTERM, SIGHUP); 141 stdout closed. An interrupted run's "
        "status has the warning 'Interrupted (CAUSE): ...'; --resume continues it.")
    p.add_argument("sweep", nargs="*", type=Path, metavar="SWEEP",
                   help="the CriticalBatchSweep manifest; a directory of them (its *.yaml and "
                   "*.yml) or several manifests are a campaign (optional with --resume of one "
                   "sweep's run)")
    p.add_argument("-o", "--out", type=Path,
                   help="output directory (default: runs/<sweep name>; a campaign's: "
                   "runs/<campaign name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out; finished trials are not rerun")
    p.add_argument("--retry-failed", action="store_true",
                   help="with --resume: start the trials that failed (crash, bad exit) again; "
                   "reached, censored and pruned trials are still never rerun")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prometheus", metavar="URL",
                     help="read metrics through this Prometheus server; it must scrape the "
                     "targets file the run writes (see --sd-file)")
    src.add_argument("--with-prometheus", action="store_true",
                     help="start the installed prometheus on loopback for this run")
    src.add_argument("--direct", action="store_true",
                     help="scrape each trainer's /metrics itself (the default unless "
                     "spec.metrics.source is prometheus)")
    p.add_argument("--sd-file", type=Path, metavar="PATH",
                   help="with --prometheus: where to write the file_sd targets (default: "
                   "OUT/prometheus/targets/trials.json)")
    p.add_argument("--trainer", metavar="COMMAND",
                   help="the trainer command (default: this Python's -m critbatch_trainer)")
    p.add_argument("--no-warm", dest="warm", action="store_false",
                   help="start each trial of the built-in trainer in a fresh Python (default: "
                   "fork it from one process that imported torch once)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads per trial (default: CPU cores / parallelism)")
    ref = p.add_mutually_exclusive_group()
    ref.add_argument("--reference-noise-ratio", type=float, metavar="R",
                     help="sigma^2/eps^3 from a reference sweep, for the predicted b*")
    ref.add_argument("--reference-run", type=Path, metavar="DIR",
                     help="a finished run of the reference sweep (its directory, status.yaml "
                     "or a resource YAML) whose noise ratio predicts b* (Proposition 3.4); "
                     "default with spec.reference.sweep NAME: NAME's run beside --out "
                     "(runs/NAME)")
    view = p.add_mutually_exclusive_group()
    view.add_argument("-q", "--quiet", action="store_true",
                      help="print only the result line")
    view.add_argument("--json", action="store_true",
                      help="JSON lines on stdout: events, progress, the final status")
    p.set_defaults(func=run)


def _options(args: argparse.Namespace, out: Path, *, workdir: Path | None,
             builtin: bool) -> RunOptions:
    """The run's options from the command line; `builtin`: some sweep runs the built-in
    trainer, which must then be installed unless --trainer replaces it."""
    if args.threads is not None and args.threads < 1:
        raise RunError(f"--threads: must be >= 1, got {args.threads}")
    if args.sd_file is not None and not args.prometheus:
        raise RunError("--sd-file: only used with --prometheus URL")
    if args.retry_failed and not args.resume:
        raise RunError("--retry-failed: only with --resume (it restarts the failed trials of "
                       "an earlier run)")
    ratio = args.reference_noise_ratio
    if ratio is not None and not (ratio > 0 and ratio != float("inf")):
        raise RunError(f"--reference-noise-ratio: must be a positive number, got {ratio}")
    opts = RunOptions(out_dir=out, resume=args.resume, threads=args.threads,
                      reference_noise_ratio=ratio, reference_run=args.reference_run,
                      retry_failed=args.retry_failed, warm=args.warm,
                      workdir=workdir)
    if args.prometheus:
        if not args.prometheus.startswith(("http://", "https://")):
            raise RunError(f"--prometheus: must be an http(s) URL, got {args.prometheus!r}")
        opts.metrics, opts.prometheus_url, opts.sd_file = MetricsMode.PROMETHEUS, \
            args.prometheus, args.sd_file
    elif args.with_prometheus:
        opts.metrics = MetricsMode.WITH_PROMETHEUS
    elif args.direct:
        opts.metrics = MetricsMode.DIRECT
    if args.trainer:
        try:
            command = shlex.split(args.trainer)
        except ValueError as exc:
            raise RunError(f"--trainer: cannot split {args.trainer!r} into words: "
                           f"{str(exc).lower()}") from None
        if not command:
            raise RunError("--trainer: must not be empty")
        opts.trainer_command = command
    elif builtin:
        _check_trainer_installed()
    return opts


def _check_trainer_installed() -> None:
    """The default trainer runs in this Python: say so now if its extra is missing."""
    import importlib.util

    for module in ("critbatch_trainer", "torch"):
        if importlib.util.find_spec(module) is None:
            raise RunError(f"--trainer: the trainer needs {module}, which this Python lacks: "
                           "pip install 'critbatch[trainer]', or pass --trainer COMMAND")


def run(args: argparse.Namespace) -> int:
    """Exit 0 when the sweep (every sweep of a campaign) succeeded, 1 when not (the last line
    says why), 130 when interrupted, 141 when stdout was closed (the run stops as if
    interrupted)."""
    paths = list(args.sweep)
    if not paths or is_plain_sweep_file(paths):
        return _run_sweep(args, paths[0] if paths else None)
    return _run_campaign(args, paths)


def _mode(args: argparse.Namespace) -> str:
    return "json" if args.json else "quiet" if args.quiet else "rich"


def _run_sweep(args: argparse.Namespace, path: Path | None) -> int:
    if path is None:
        if not (args.resume and args.out):
            raise InputError("SWEEP.yaml: required (or --resume with --out DIR)")
        saved = args.out / "sweep.yaml"
        if not saved.is_file():
            if holds_campaign_run(args.out):
                raise RunError(f"--out: {args.out} holds a campaign run: resume it with its "
                               f"manifests, critbatch run --resume DIR -o {args.out}")
            raise RunError(f"--out: {args.out} holds no run to resume (no sweep.yaml)")
        manifest = load_manifest(saved)
    else:
        manifest = load_manifest(path)
    sweep = parse_sweep(manifest)
    out = args.out or Path("runs") / sweep.name
    options = _options(args, out, workdir=path.resolve().parent if path is not None else None,
                       builtin=not sweep.trainer.custom)
    runner = LocalRun(manifest, options, make_progress(_mode(args)))
    status = runner.run()
    why = runner.interrupted_warning() if runner.interrupted else failure_reason(status)
    if runner.output_closed:
        return _output_closed(why or f"{runner.output_closed}; {headline(status)}")
    if args.json:
        print(json.dumps({"event": "done", "out": str(out), "status": status, "reason": why},
                         default=str))
    elif args.quiet:
        print(f"{headline(status)}; report: {out / report.MARKDOWN_NAME}"
              + (f"; {why}" if why else ""))
    else:
        print_summary(status, out, why)
    if runner.interrupted:
        return 130
    return 0 if status.get("phase") == "Succeeded" else 1


def _output_closed(why: str) -> int:
    silence_stdout()
    with contextlib.suppress(OSError):
        print(f"critbatch: {why}", file=sys.stderr)
    return 141


def _run_campaign(args: argparse.Namespace, paths: list[Path]) -> int:
    for flag, value in (("--reference-run", args.reference_run),
                        ("--reference-noise-ratio", args.reference_noise_ratio)):
        if value is not None:
            raise RunError(f"{flag}: not for a campaign, whose sweeps name their references "
                           "(spec.reference.sweep)")
    campaign = load_campaign(paths, args.out)
    out = args.out or Path("runs") / campaign.name
    builtin = any(not parse_sweep(s.manifest).trainer.custom for s in campaign.sweeps)
    options = _options(args, out, workdir=None, builtin=builtin)
    mode = _mode(args)
    view = CampaignView(mode, campaign.name)
    runner = CampaignRun(campaign, options, lambda name: make_progress(mode), view)
    resources = runner.run()
    statuses = [r.get("status") or {} for r in resources]
    why = _campaign_reason(runner, resources, paths, out)
    if runner.output_closed:
        return _output_closed(why or runner.output_closed)
    rows = campaign_rows(resources)
    if args.json:
        print(json.dumps({"event": "done", "campaign": campaign.name, "out": str(out),
                          "report": [str(f) for f in runner.report_files], "sweeps": rows,
                          "reason": why}, default=str))
    elif args.quiet:
        for r, status in zip(resources, statuses, strict=True):
            print(f"{r['metadata']['name']}: {headline(status)}")
        print(f"campaign {campaign.name}: {_tally(statuses)}; report: "
              f"{_markdown(runner.report_files, out)}" + (f"; {why}" if why else ""))
    else:
        print_campaign(campaign.name, rows, runner.report_files, why, _tally(statuses))
    if runner.interrupted:
        return 130
    return 0 if all(s.get("phase") == "Succeeded" for s in statuses) else 1


def _markdown(files: list[Path], out: Path) -> Path:
    return next((f for f in files if f.suffix == ".md"), out / MARKDOWN_NAME)


def _tally(statuses: list[dict]) -> str:
    done = sum(s.get("phase") == "Succeeded" for s in statuses)
    return f"{done}/{len(statuses)} sweeps succeeded"


def _campaign_reason(runner: CampaignRun, resources: list[dict], paths: list[Path],
                     out: Path) -> str | None:
    """The campaign's last line: how to continue an interrupted one, else which sweeps did not
    succeed and why; None when all did."""
    if runner.interrupted or runner.output_closed:
        cause = runner.interrupt_cause or runner.output_closed or "Ctrl-C"
        where = f" in sweep {runner.interrupted_sweep}" if runner.interrupted_sweep else ""
        again = shlex.join(["critbatch", "run", "--resume", *map(str, paths), "-o", str(out)])
        return (f"Interrupted ({cause}){where}: later sweeps not started; continue the "
                f"campaign with {again}")
    failed = [f"{r['metadata']['name']} ({failure_reason(r.get('status') or {})})"
              for r in resources if (r.get("status") or {}).get("phase") != "Succeeded"]
    return f"not succeeded: {'; '.join(failed)}" if failed else None


class CampaignView:
    """The campaign's own lines between its sweeps' views: one as each sweep starts and ends
    (stderr), or JSON lines on stdout, or nothing (--quiet)."""

    def __init__(self, mode: str, name: str) -> None:
        self.mode = mode
        self.name = name

    def __call__(self, kind: str, **fields: Any) -> None:
        if self.mode == "json":
            print(json.dumps({"event": kind, **fields}, default=str), flush=True)
            return
        if self.mode == "quiet":
            return
        at = f"campaign {self.name} [{fields.get('index')}/{fields.get('of')}]"
        if kind == "campaign":
            skipped = fields.get("skipped") or []
            text = (f"campaign {self.name}: {len(fields['sweeps'])} sweeps "
                    f"({', '.join(fields['sweeps'])}) -> {fields['out']}"
                    + (f"; not sweeps: {', '.join(skipped)}" if skipped else ""))
        elif kind == "sweep-start":
            text = f"{at}: sweep {fields['sweep']} -> {fields['out']}"
        elif kind == "sweep-kept":
            text = f"{at}: sweep {fields['sweep']} finished before ({fields['phase']}): kept"
        elif kind == "sweep-done":
            text = f"{at}: sweep {fields['sweep']}: {fields['headline']}"
        else:
            text = f"{kind}: " + " ".join(f"{k}={v}" for k, v in fields.items())
        print(text, file=sys.stderr, flush=True)


def print_campaign(name: str, rows: list[dict], files: list[Path], why: str | None,
                   tally: str) -> None:
    """The campaign table (a row per sweep: its answer beside its prediction), the report's
    files, and last, why it did not all succeed."""
    from rich.console import Console

    console = Console(file=sys.stdout)
    console.print(terminal_table(name, rows))
    console.print(tally, markup=False, soft_wrap=True)
    console.print(f"report: {', '.join(map(str, files))}", markup=False, soft_wrap=True)
    if why:
        console.print(why, style="bold red", markup=False, soft_wrap=True)


def print_summary(status: dict, out: Path, why: str | None = None) -> None:
    """The trials' table and b*, as the end of a terminal run; last, why it did not succeed."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="trials", title_justify="left")
    metric = report.metric_name({"status": status})
    for col in ("b", "seed", "phase", "N(b)", "SFO", metric, "reached", "source"):
        table.add_column(col, justify="left" if col in ("phase", "reached", "source")
                         else "right")
    for r in report.trial_rows(status):
        table.add_row(report.fmt(r["batch_size"]), str(r["seed"]), r["phase"],
                      report.fmt(r["steps"]), report.fmt(r["sfo"]), report.fmt(r["value"]),
                      "yes" if r["reached"] else "no", r["source"] or "")
    console = Console(file=sys.stdout)
    console.print(table)
    console.print(headline(status), soft_wrap=True)
    for w in status.get("warnings") or []:
        if w != why:
            console.print(f"warning: {w}", style="yellow", markup=False, soft_wrap=True)
    console.print(f"report: {out / report.MARKDOWN_NAME}, {out / report.PNG_NAME}, "
                  f"{out / report.SVG_NAME}", markup=False, soft_wrap=True)
    if why:
        console.print(why, style="bold red", markup=False, soft_wrap=True)
