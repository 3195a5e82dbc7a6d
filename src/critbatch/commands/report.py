"""`critbatch report`: the plot and summary of a sweep, or of a campaign of sweeps, from the
cluster or a local run."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from critbatch import campaign, campaign_report, report
from critbatch.commands import print_json, stdout_console
from critbatch.errors import InputError
from critbatch.files import MAX_VALUES, check_values, load_yaml_all, read_text

HELP = "render a sweep's or a campaign's report (PNG, SVG, Markdown) from the status"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help=HELP,
        description=HELP + ". Reads `kubectl get cbs NAME -o yaml` on stdin or from a file, "
        "a local run's output directory, or the cluster itself with --name. Several sweeps "
        "(a List, several YAML documents, a directory of run directories, or --selector) "
        "make a campaign: each sweep's report, and the campaign's table and plot "
        "(campaign.md, campaign.png, campaign.svg) beside them.")
    p.add_argument("source", nargs="?", default=None, metavar="FILE|DIR|-",
                   help="a CriticalBatchSweep YAML (- for stdin; a List or several documents "
                   "for a campaign), a `critbatch run` output directory, or a directory of "
                   "them (a campaign)")
    p.add_argument("--name", help="read the sweep NAME from the cluster (kubernetes client)")
    p.add_argument("-l", "--selector", metavar="SELECTOR",
                   help="read the sweeps matching a label selector from the cluster as one "
                   f"campaign, e.g. {campaign.CAMPAIGN_LABEL}=NAME (kubernetes client; a "
                   "campaign report even when one sweep matches)")
    p.add_argument("-n", "--namespace", default=None,
                   help="with --name or --selector: the namespace (default: the kubeconfig's)")
    p.add_argument("--context", default=None,
                   help="with --name or --selector: the kubeconfig context")
    p.add_argument("-o", "--out", type=Path,
                   help="where to write the report (default: a local run's directory, "
                   "else report-<name>)")
    p.add_argument("--json", action="store_true",
                   help="print the sweeps' rows and the files written as JSON")
    p.set_defaults(func=run)


MAX_BYTES = 16 << 20  # `kubectl get cbs -o yaml` of many sweeps


def _read_stdin() -> str:
    """stdin, bounded like a file (a text stream in tests)."""
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:
        text = sys.stdin.read(MAX_BYTES + 1)
        data = text.encode(errors="surrogateescape")
    else:
        data = buffer.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise InputError(f"stdin: larger than {MAX_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"stdin: not UTF-8 text (invalid byte at offset {exc.start})") from None


def _documents(text: str, label: str) -> list[Any]:
    """Every YAML document in `text` (empty ones skipped), each bounded as `load_yaml` bounds
    one; a List's items stand for themselves."""
    docs: list[Any] = []
    for doc in load_yaml_all(text, label, finite=False):
        if doc is None:
            continue
        if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List"):
            items = doc.get("items") or []
            if not isinstance(items, list) or not items:
                raise InputError("items: the list holds no CriticalBatchSweep")
            docs += items
        else:
            docs.append(doc)
        if len(docs) > campaign.MAX_SWEEPS:
            raise InputError(f"{label}: more than {campaign.MAX_SWEEPS} sweeps")
    return docs or [None]


def _run_resource(run_dir: Path) -> Any:
    """A run directory's sweep.yaml: the manifest with its status (status.yaml's when the
    manifest has none yet)."""
    file = run_dir / "sweep.yaml"
    docs = _documents(read_text(file, "FILE", limit=MAX_BYTES), str(file))
    resource = docs[0]
    status_file = run_dir / "status.yaml"
    if isinstance(resource, dict) and not resource.get("status") and status_file.is_file():
        status = _documents(read_text(status_file, "FILE", limit=MAX_BYTES), str(status_file))
        resource = {**resource, "status": status[0]}
    return resource


def _is_run_dir(path: Path) -> bool:
    return (path / "sweep.yaml").is_file() or (path / "status.yaml").is_file()


def _from_source(source: str) -> tuple[list[Any], Path | None, Path | None]:
    """The resources in a file, stdin, a run directory or a directory of run directories;
    the run directory if it was one, and the campaign's directory if it was one."""
    if source == "-":
        return _documents(_read_stdin(), "stdin"), None, None
    path = Path(source)
    if not path.is_dir():
        return _documents(read_text(path, "FILE", limit=MAX_BYTES), str(path)), None, None
    if _is_run_dir(path):
        return [_run_resource(path)], path, None
    runs = sorted(p for p in path.iterdir() if p.is_dir() and _is_run_dir(p))
    if not runs:
        raise InputError(f"DIR: {path} is no run directory (no sweep.yaml) and holds none")
    if len(runs) > campaign.MAX_SWEEPS:
        raise InputError(f"DIR: {path} holds more than {campaign.MAX_SWEEPS} run directories")
    return [_run_resource(p) for p in runs], None, path


def safe_name(name: str) -> str:
    """A sweep's name as one harmless path component: a name comes from the input, and a
    name such as `../../x` or `/etc` must not choose where the report goes."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:100]
    return text or "sweep"


def _inside(base: Path, name: str) -> Path:
    """`base/name`, refused when it resolves (through a link already there) outside `base`."""
    path = base / name
    if not path.resolve().is_relative_to(base.resolve()):
        raise InputError(f"--out: {path} leads outside {base} (a symbolic link?)")
    return path


def _unique(names: list[str], taken: set[str]) -> list[str]:
    """The names made unique (`x`, `x-2`) and different from `taken`."""
    unique, used = [], set(taken)
    for name in names:
        n, candidate = 1, name
        while candidate in used:
            n += 1
            candidate = f"{name}-{n}"
        used.add(candidate)
        unique.append(candidate)
    return unique


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {out} exists and is not a directory")


def _out_dirs(resources: list[Any], out: Path | None, run_dir: Path | None,
              taken: frozenset[str] = frozenset()) -> list[Path]:
    """Where each resource's report goes: always inside --out (or the run directory, or
    report-<name> here), each in a directory of its own."""
    unique = _unique([safe_name(str(_metadata(r).get("name") or "sweep")) for r in resources],
                     set(taken))
    if out is not None:
        _check_out(out)
        return [_inside(out, n) for n in unique] if len(resources) > 1 else [out]
    if run_dir is not None and len(resources) == 1:
        return [run_dir]
    here = Path(".")
    return [_inside(here, f"report-{n}") for n in unique]


def _metadata(resource: Any) -> dict:
    meta = resource.get("metadata") if isinstance(resource, dict) else None
    return meta if isinstance(meta, dict) else {}


def _custom_objects(flag: str, hint: str, namespace: str | None,
                    context: str | None) -> tuple[Any, str, type[Exception]]:
    """The kubernetes client's CustomObjectsApi (only in the `operator` extra), the namespace
    to read, and the client's error type."""
    try:
        from kubernetes import client, config
        from kubernetes.client.rest import ApiException
    except ImportError:
        raise InputError(f"{flag}: reading from the cluster needs the kubernetes client: "
                         "pip install 'critbatch[operator]', or pipe `kubectl get cbs "
                         f"{hint} -o yaml` into critbatch report -") from None
    try:
        config.load_kube_config(context=context)
        if namespace is None:
            _, active = config.list_kube_config_contexts()
            namespace = (active.get("context") or {}).get("namespace") or "default"
    except config.ConfigException:
        try:
            config.load_incluster_config()
        except config.ConfigException as exc:
            raise InputError(f"{flag}: no Kubernetes configuration: {exc}") from None
        namespace = namespace or "default"
    return client.CustomObjectsApi(), namespace, ApiException


def _from_cluster(name: str, namespace: str | None, context: str | None) -> dict:
    """The sweep NAME through the kubernetes client."""
    from critbatch.spec import GROUP, PLURAL, VERSION

    api, namespace, api_error = _custom_objects("--name", name, namespace, context)
    try:
        return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except api_error as exc:
        raise InputError(f"--name: {namespace}/{name}: {exc.status} {exc.reason}") from None


def _list_from_cluster(selector: str, namespace: str | None, context: str | None) -> list[Any]:
    """The sweeps a label selector matches, through the kubernetes client."""
    from critbatch.spec import GROUP, PLURAL, VERSION

    api, namespace, api_error = _custom_objects("--selector", f"-l {selector}", namespace,
                                                context)
    try:
        listing = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                    label_selector=selector)
    except api_error as exc:
        raise InputError(f"--selector: {namespace}/{selector}: {exc.status} "
                         f"{exc.reason}") from None
    items = listing.get("items") if isinstance(listing, Mapping) else None
    if not isinstance(items, list):
        raise InputError("--selector: the cluster's answer holds no list of items")
    if not items:
        raise InputError(f"--selector: no CriticalBatchSweep in namespace {namespace} matches "
                         f"{selector}")
    if len(items) > campaign.MAX_SWEEPS:
        raise InputError(f"--selector: {len(items)} sweeps match, more than "
                         f"{campaign.MAX_SWEEPS}")
    check_values(items, "--selector", finite=False, limit=MAX_VALUES * 10)
    return items


def _printable(text: Any) -> str:
    return "".join(c if c.isprintable() else "?" for c in str(text))[:200]


def _campaign(resources: list[Any], args: argparse.Namespace, home: Path | None) -> int:
    """Each sweep's report (not for a directory of runs: they have theirs), then the
    campaign's, into --out (default: the campaign's directory, else report-<campaign>)."""
    rows = campaign.campaign_rows(resources)
    name = campaign.campaign_name(resources) or (home.resolve().name if home else "campaign")
    out = args.out if args.out is not None else home or Path(f"report-{safe_name(name)}")
    _check_out(out)
    written: list[tuple[str, list[Path]]] = []
    if home is None:
        reserved = frozenset({campaign_report.MARKDOWN_NAME, campaign_report.PNG_NAME,
                              campaign_report.SVG_NAME})
        with_status = [r for r in campaign.campaign_order(resources) if r.get("status")]
        dirs = [_inside(out, sub) for sub in _unique(
            [safe_name(str(_metadata(r).get("name"))) for r in with_status], set(reserved))]
        for resource, sub in zip(with_status, dirs, strict=True):
            files = report.render(resource, sub)
            written.append((_printable(_metadata(resource).get("name")),
                            [files.markdown, files.png, files.svg]))
    files = campaign_report.write_campaign_report(out, name, resources)
    if args.json:
        print_json({"campaign": name, "rows": rows,
                    "files": [str(f) for _, fs in written for f in fs] + list(map(str, files))})
        return 0
    stdout_console().print(campaign_report.terminal_table(name, rows))
    for sweep, fs in written:
        print(f"{sweep}: {' '.join(map(str, fs))}")
    print(f"campaign {_printable(name)}: {' '.join(map(str, files))}")
    return 0


def run(args: argparse.Namespace) -> int:
    if sum(bool(x) for x in (args.name, args.selector, args.source)) > 1:
        raise InputError("FILE: give one of FILE|DIR|-, --name and --selector, not several")
    home = None
    if args.name:
        resources, run_dir = [_from_cluster(args.name, args.namespace, args.context)], None
    elif args.selector:
        resources = _list_from_cluster(args.selector, args.namespace, args.context)
        run_dir = None
    elif args.source:
        resources, run_dir, home = _from_source(args.source)
    else:
        raise InputError("FILE: required (a file, a run directory, or - for stdin), --name or "
                         "--selector")
    if home is not None or args.selector or len(resources) > 1:
        return _campaign(resources, args, home)
    for resource in resources:
        report.check_resource(resource)
    written = []
    for resource, out in zip(resources, _out_dirs(resources, args.out, run_dir), strict=True):
        name = _printable(_metadata(resource).get("name") or "sweep")
        files = report.render(resource, out)
        written.append(files)
        if not args.json:
            print(f"{name}: {files.markdown} {files.png} {files.svg}")
    if args.json:
        print_json({"campaign": None, "rows": campaign.campaign_rows(resources),
                    "files": [str(p) for f in written for p in (f.markdown, f.png, f.svg)]})
    return 0
