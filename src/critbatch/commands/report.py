"""`critbatch report`: the plot and summary of a sweep, from the cluster or a local run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from critbatch import report
from critbatch.errors import InputError

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


def _load_yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{where}: not valid YAML: {str(exc).splitlines()[0]}") from None


def _from_source(source: str) -> tuple[list[dict], Path | None]:
    """The resources in a file, stdin or run directory, and that directory if it was one."""
    if source == "-":
        doc = _load_yaml(sys.stdin.read(), "stdin")
        run_dir = None
    else:
        path = Path(source)
        run_dir = path if path.is_dir() else None
        file = path / "sweep.yaml" if run_dir else path
        try:
            text = file.read_text()
        except OSError as exc:
            raise InputError(f"FILE: cannot read {file}: {exc.strerror}") from None
        doc = _load_yaml(text, str(file))
    if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List"):
        items = doc.get("items") or []
        if not items:
            raise InputError("items: the list holds no CriticalBatchSweep")
        return items, run_dir
    return [doc], run_dir


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
        name = str((resource.get("metadata") or {}).get("name") or "sweep")
        if args.out is not None:
            out = args.out / name if len(resources) > 1 else args.out
        else:
            out = run_dir if run_dir is not None else Path(f"report-{name}")
        files = report.render(resource, out)
        print(f"{name}: {files.markdown} {files.png} {files.svg}")
    return 0
