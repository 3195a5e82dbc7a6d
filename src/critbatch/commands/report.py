"""`critbatch report`: the plot and summary of a sweep, from the cluster or a local run."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from critbatch import report
from critbatch.errors import InputError
from critbatch.files import load_yaml, read_text

HELP = "render a sweep's report (PNG, SVG, Markdown) from its status"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help=HELP,
        description=HELP + ". Reads `kubectl get cbs NAME -o yaml` on stdin or from a file, "
        "a local run's output directory, or the cluster itself with --name.")
    p.add_argument("source", nargs="?", default=None, metavar="FILE|DIR|-",
                   help="a CriticalBatchSweep YAML (- for stdin) or a `critbatch run` "
                   "output directory")
    p.add_argument("--name", help="read the sweep NAME from the cluster (kubernetes client)")
    p.add_argument("-n", "--namespace", default=None,
                   help="with --name: its namespace (default: the kubeconfig's)")
    p.add_argument("--context", default=None, help="with --name: the kubeconfig context")
    p.add_argument("-o", "--out", type=Path,
                   help="where to write the report (default: a local run's directory, "
                   "else report-<name>)")
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


def _from_source(source: str) -> tuple[list[Any], Path | None]:
    """The resources in a file, stdin or run directory, and that directory if it was one."""
    if source == "-":
        doc = load_yaml(_read_stdin(), "stdin", finite=False)
        run_dir = None
    else:
        path = Path(source)
        run_dir = path if path.is_dir() else None
        file = path / "sweep.yaml" if run_dir else path
        doc = load_yaml(read_text(file, "FILE", limit=MAX_BYTES), str(file), finite=False)
    if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List"):
        items = doc.get("items") or []
        if not isinstance(items, list) or not items:
            raise InputError("items: the list holds no CriticalBatchSweep")
        return items, run_dir
    return [doc], run_dir


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


def _out_dirs(resources: list[Any], out: Path | None, run_dir: Path | None) -> list[Path]:
    """Where each resource's report goes: always inside --out (or the run directory, or
    report-<name> here), each in a directory of its own."""
    names = [safe_name(str(_metadata(r).get("name") or "sweep")) for r in resources]
    unique, used = [], set()
    for name in names:
        n, candidate = 1, name
        while candidate in used:
            n += 1
            candidate = f"{name}-{n}"
        used.add(candidate)
        unique.append(candidate)
    if out is not None:
        if out.exists() and not out.is_dir():
            raise InputError(f"--out: {out} exists and is not a directory")
        return [_inside(out, n) for n in unique] if len(resources) > 1 else [out]
    if run_dir is not None and len(resources) == 1:
        return [run_dir]
    here = Path(".")
    return [_inside(here, f"report-{n}") for n in unique]


def _metadata(resource: Any) -> dict:
    meta = resource.get("metadata") if isinstance(resource, dict) else None
    return meta if isinstance(meta, dict) else {}


def _from_cluster(name: str, namespace: str | None, context: str | None) -> dict:
    """The sweep through the kubernetes client (only in the `operator` extra)."""
    try:
        from kubernetes import client, config
        from kubernetes.client.rest import ApiException
    except ImportError:
        raise InputError("--name: reading from the cluster needs the kubernetes client: "
                         "pip install 'critbatch[operator]', or pipe `kubectl get cbs "
                         f"{name} -o yaml` into critbatch report -") from None
    from critbatch.spec import GROUP, PLURAL, VERSION

    try:
        config.load_kube_config(context=context)
        if namespace is None:
            _, active = config.list_kube_config_contexts()
            namespace = (active.get("context") or {}).get("namespace") or "default"
    except config.ConfigException:
        try:
            config.load_incluster_config()
        except config.ConfigException as exc:
            raise InputError(f"--name: no Kubernetes configuration: {exc}") from None
        namespace = namespace or "default"
    try:
        return client.CustomObjectsApi().get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as exc:
        raise InputError(f"--name: {namespace}/{name}: {exc.status} {exc.reason}") from None


def run(args: argparse.Namespace) -> int:
    if args.name and args.source:
        raise InputError("--name: give either FILE|DIR|- or --name, not both")
    if args.name:
        resources, run_dir = [_from_cluster(args.name, args.namespace, args.context)], None
    elif args.source:
        resources, run_dir = _from_source(args.source)
    else:
        raise InputError("FILE: required (a file, a run directory, or - for stdin), or --name")
    for resource in resources:
        report.check_resource(resource)
    for resource, out in zip(resources, _out_dirs(resources, args.out, run_dir), strict=True):
        name = "".join(c if c.isprintable() else "?"
                       for c in str(_metadata(resource).get("name") or "sweep"))[:200]
        files = report.render(resource, out)
        print(f"{name}: {files.markdown} {files.png} {files.svg}")
    return 0
