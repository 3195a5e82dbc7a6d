"""critbatch-operator: run the kopf operator with its liveness probe and metrics endpoint."""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Sequence

from critbatch.spec import POD_TEMPLATE_ALLOWANCES
from critbatch_operator.config import (
    ENV_PREFIX,
    Config,
    pod_template_allowances,
    prometheus_url_prefixes,
)


def parse_args(argv: Sequence[str] | None = None) -> tuple[Config, argparse.Namespace]:
    """Flags, defaulting to CRITBATCH_* environment variables (see docs/operator.md)."""
    try:
        env = Config.from_env()
    except ValueError as exc:
        raise SystemExit(f"critbatch-operator: error: {exc}") from None
    p = argparse.ArgumentParser(
        prog="critbatch-operator",
        description="Run CriticalBatchSweeps as Kubernetes Jobs and find the critical batch "
                    "size.")
    p.add_argument("--namespace", "-n", action="append", default=None, metavar="NS",
                   help="watch this namespace (repeatable; default: all namespaces; env "
                        f"{ENV_PREFIX}NAMESPACES, comma-separated)")
    p.add_argument("--prometheus-url", default=env.prometheus_url, metavar="URL",
                   help="Prometheus HTTP API for trial metrics when a sweep names none "
                        f"(env {ENV_PREFIX}PROMETHEUS_URL; default: scrape trainer pods)")
    p.add_argument("--prometheus-namespace-label", default=env.prometheus_namespace_label,
                   metavar="LABEL", help="label holding the pod's namespace in Prometheus, "
                   "'' for none (default: namespace)")
    p.add_argument("--reconcile-interval", type=float, default=env.reconcile_interval,
                   metavar="SECONDS", help="seconds between reconciles of a sweep (default 10)")
    p.add_argument("--metrics-timeout", type=float, default=env.metrics_timeout,
                   metavar="SECONDS", help="timeout of a metrics request (default 5)")
    p.add_argument("--max-backoff", type=float, default=env.max_backoff, metavar="SECONDS",
                   help="longest wait before retrying an unreachable Prometheus (default 300)")
    p.add_argument("--metrics-port", type=int, default=env.metrics_port, metavar="PORT",
                   help="serve the operator's /metrics here, 0 = off (default 8080)")
    p.add_argument("--health-port", type=int, default=env.health_port, metavar="PORT",
                   help="serve the liveness probe /healthz here, 0 = off (default 8081)")
    p.add_argument("--trainer-metrics-port", type=int, default=env.trainer_metrics_port,
                   metavar="PORT", help="port of the trainers' /metrics (default 9100)")
    p.add_argument("--trainer-image", default=env.trainer_image, metavar="IMAGE",
                   help="trainer image for sweeps that name none (env "
                        f"{ENV_PREFIX}TRAINER_IMAGE)")
    p.add_argument("--peering", default=env.peering, metavar="NAME",
                   help="run with kopf peering NAME (several replicas, one active; env "
                        f"{ENV_PREFIX}PEERING); default: standalone")
    p.add_argument("--priority", type=int, default=env.priority, metavar="N",
                   help="this replica's peering priority (env "
                        f"{ENV_PREFIX}PRIORITY; default: random, since kopf pauses every "
                        "replica when two share a priority)")
    p.add_argument("--allow-pod-template", action="append", default=None, metavar="NAME",
                   help="let sweeps' pod templates add NAME (repeatable or comma-separated; "
                        f"env {ENV_PREFIX}ALLOW_POD_TEMPLATE; default: none, only what cannot "
                        f"widen access): {', '.join(POD_TEMPLATE_ALLOWANCES)}")
    p.add_argument("--allow-prometheus-url", action="append", default=None, metavar="PREFIX",
                   help="let sweeps' spec.metrics.prometheusURL use URLs under PREFIX "
                        f"(repeatable; env {ENV_PREFIX}ALLOW_PROMETHEUS_URLS, comma-separated; "
                        "default: only --prometheus-url)")
    p.add_argument("--server", default=env.kube_server, metavar="URL",
                   help="Kubernetes API server URL (default: in-cluster, then kubeconfig)")
    p.add_argument("--verbose", action="store_true", help="log more")
    args = p.parse_args(argv)
    for name in ("reconcile_interval", "metrics_timeout", "max_backoff"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')}: must be > 0")
    for name in ("metrics_port", "health_port", "trainer_metrics_port"):
        if not 0 <= getattr(args, name) <= 65535:
            p.error(f"--{name.replace('_', '-')}: must be in 0..65535")
    allow_pod_template, allow_prometheus_urls = env.allow_pod_template, env.allow_prometheus_urls
    try:
        if args.allow_pod_template is not None:
            names = [n.strip() for a in args.allow_pod_template for n in a.split(",")]
            allow_pod_template = pod_template_allowances(filter(None, names),
                                                         "--allow-pod-template")
        if args.allow_prometheus_url is not None:
            allow_prometheus_urls = prometheus_url_prefixes(args.allow_prometheus_url,
                                                            "--allow-prometheus-url")
    except ValueError as exc:
        p.error(str(exc))
    cfg = Config(
        prometheus_url=args.prometheus_url,
        prometheus_namespace_label=args.prometheus_namespace_label,
        reconcile_interval=args.reconcile_interval,
        metrics_timeout=args.metrics_timeout,
        namespaces=tuple(args.namespace) if args.namespace else env.namespaces,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        trainer_metrics_port=args.trainer_metrics_port,
        max_backoff=args.max_backoff,
        kube_server=args.server,
        trainer_image=args.trainer_image,
        peering=args.peering,
        priority=args.priority,
        allow_pod_template=allow_pod_template,
        allow_prometheus_urls=allow_prometheus_urls,
    )
    return cfg, args


def main(argv: Sequence[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    import kopf  # imported late: --help works without a cluster client configured

    from critbatch_operator import opmetrics
    from critbatch_operator.handlers import register

    kopf.configure(verbose=args.verbose)
    priority = cfg.priority
    if priority is None:
        priority = random.SystemRandom().randint(1, 1_000_000_000) if cfg.peering else 0
    registry = kopf.OperatorRegistry()
    register(registry, cfg)
    if cfg.metrics_port:
        opmetrics.serve(cfg.metrics_port)
    kopf.run(
        registry=registry,
        standalone=not cfg.peering,
        peering_name=cfg.peering,
        priority=priority,
        clusterwide=not cfg.namespaces,
        namespaces=cfg.namespaces,
        liveness_endpoint=f"http://0.0.0.0:{cfg.health_port}/healthz" if cfg.health_port
        else None,
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
