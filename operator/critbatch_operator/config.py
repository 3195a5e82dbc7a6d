"""The operator's settings: command-line flags, with environment variables as their defaults.

The Helm chart sets the environment; `critbatch-operator --help` lists the flags.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from critbatch.spec import POD_TEMPLATE_ALLOWANCES

ENV_PREFIX = "CRITBATCH_"


@dataclass(frozen=True, kw_only=True)
class Config:
    """What the handlers need to know about their environment."""

    prometheus_url: str | None = None
    prometheus_namespace_label: str = "namespace"
    reconcile_interval: float = 10.0
    metrics_timeout: float = 5.0
    namespaces: tuple[str, ...] = ()
    metrics_port: int = 8080
    health_port: int = 8081
    trainer_metrics_port: int = 9100
    max_backoff: float = 300.0
    kube_server: str | None = None  # an explicit API server URL (development and tests)
    trainer_image: str | None = None  # for sweeps whose spec.trainer.image is unset
    peering: str | None = None  # kopf peering name (several replicas); None: standalone
    priority: int | None = None  # kopf peering priority; None: random (replicas must differ)
    # What the cluster administrator lets sweeps ask for beyond the safe defaults: names of
    # POD_TEMPLATE_ALLOWANCES, and URL prefixes a sweep's spec.metrics.prometheusURL may use.
    allow_pod_template: frozenset[str] = field(default_factory=frozenset)
    allow_prometheus_urls: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Config:
        """Settings from CRITBATCH_* variables; unset ones keep their defaults."""
        env = dict(os.environ if env is None else env)

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name, "").strip()
            return value or None

        def number(name: str, default: float, kind: type = float) -> float:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise ValueError(f"{ENV_PREFIX}{name}: must be a number, got {raw!r}") from None
            if value < 0:
                raise ValueError(f"{ENV_PREFIX}{name}: must be >= 0, got {raw!r}")
            return value

        namespaces = tuple(n.strip() for n in (get("NAMESPACES") or "").split(",") if n.strip())
        label = env.get(ENV_PREFIX + "PROMETHEUS_NAMESPACE_LABEL")
        return cls(
            prometheus_url=get("PROMETHEUS_URL"),
            prometheus_namespace_label="namespace" if label is None else label.strip(),
            reconcile_interval=number("RECONCILE_INTERVAL", cls.reconcile_interval),
            metrics_timeout=number("METRICS_TIMEOUT", cls.metrics_timeout),
            namespaces=namespaces,
            metrics_port=int(number("METRICS_PORT", cls.metrics_port, int)),
            health_port=int(number("HEALTH_PORT", cls.health_port, int)),
            trainer_metrics_port=int(number("TRAINER_METRICS_PORT", cls.trainer_metrics_port,
                                            int)),
            max_backoff=number("MAX_BACKOFF", cls.max_backoff),
            kube_server=get("KUBE_SERVER"),
            trainer_image=get("TRAINER_IMAGE"),
            peering=get("PEERING"),
            priority=_optional_int(get("PRIORITY"), ENV_PREFIX + "PRIORITY"),
            allow_pod_template=pod_template_allowances(
                _split(get("ALLOW_POD_TEMPLATE")), ENV_PREFIX + "ALLOW_POD_TEMPLATE"),
            allow_prometheus_urls=prometheus_url_prefixes(
                _split(get("ALLOW_PROMETHEUS_URLS")), ENV_PREFIX + "ALLOW_PROMETHEUS_URLS"),
        )


def _split(raw: str | None) -> list[str]:
    return [x.strip() for x in (raw or "").split(",") if x.strip()]


def pod_template_allowances(names: Iterable[str], source: str) -> frozenset[str]:
    """Validated names of what sweeps' pod templates may add (a misspelt one would allow
    nothing and hide the mistake)."""
    names = frozenset(names)
    unknown = sorted(names - set(POD_TEMPLATE_ALLOWANCES))
    if unknown:
        raise ValueError(f"{source}: unknown {', '.join(unknown)} (expected some of "
                         f"{', '.join(POD_TEMPLATE_ALLOWANCES)})")
    return names


def prometheus_url_prefixes(prefixes: Iterable[str], source: str) -> tuple[str, ...]:
    """Validated http(s) URL prefixes: a scheme and host, no credentials, query or fragment."""
    out = []
    for prefix in prefixes:
        try:
            u = urlsplit(prefix)
            ok = (u.scheme in ("http", "https") and bool(u.hostname) and u.username is None
                  and not u.query and not u.fragment and u.port != 0)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{source}: {prefix!r} is not an http(s) URL prefix "
                             "(scheme://host[:port][/path])")
        out.append(prefix)
    return tuple(out)


def _optional_int(raw: str | None, name: str) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}: must be an integer, got {raw!r}") from None
