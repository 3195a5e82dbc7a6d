"""kopf handlers: thin. Each one hands the sweep to `reconcile`, the one place that acts.

`kopf run -m critbatch_operator.handlers` registers them into kopf's default registry with the
settings from the environment; `register` does the same into any registry (the CLI and the
tests use it).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import kopf
import urllib3
from kubernetes.client.rest import ApiException

from critbatch.spec import GROUP, PLURAL, VERSION
from critbatch_operator import opmetrics
from critbatch_operator.config import Config
from critbatch_operator.kube import Kube, make_api_client
from critbatch_operator.reconcile import SweepState, reconcile

MAX_EVENT_MESSAGE = 1000


@dataclass
class Context:
    """One registration's configuration, API client and per-sweep state."""

    cfg: Config
    kube: Kube | None = None
    states: dict[str, SweepState] = field(default_factory=dict)

    async def run(self, body: kopf.Body, logger: logging.Logger | Any, force: bool = False,
                  ) -> None:
        """Reconcile the sweep (`force`: even while backing off after a failed reconcile)."""
        if self.kube is None:
            self.kube = Kube(make_api_client(self.cfg.kube_server))
        uid = body.get("metadata", {}).get("uid") or body.get("metadata", {}).get("name")
        state = self.states.setdefault(uid, SweepState())

        events: list[tuple[str, str, str]] = []

        def emit(type_: str, reason: str, message: str) -> None:
            events.append((type_, reason, message[:MAX_EVENT_MESSAGE]))

        task = asyncio.ensure_future(reconcile(dict(body), kube=self.kube, cfg=self.cfg,
                                               state=state, emit=emit, force=force))
        try:
            outcome = await asyncio.shield(task)
        except asyncio.CancelledError:
            # A stopping operator lets the reconcile finish its writes (they run in threads
            # anyway), so that every Job it created gets its Event.
            await asyncio.wait([task])
            raise
        finally:
            await asyncio.to_thread(self._post, body, events, logger)
        if outcome.created or outcome.deleted:
            logger.info("created %s, deleted %s", outcome.created, outcome.deleted)
        if outcome.error:  # info: kopf would post a warning as one more Event
            logger.info("reconcile failed: %s; backing off", outcome.error)


    def _post(self, body: kopf.Body, events: list[tuple[str, str, str]],
              logger: logging.Logger | Any) -> None:
        """Post the reconcile's Events now, not from a queue that a stopping operator drops."""
        for type_, reason, message in events:
            try:
                self.kube.post_event(body, type_, reason, message)
            except (ApiException, OSError, urllib3.exceptions.HTTPError) as exc:
                logger.warning("could not post Event %s: %s", reason, exc)


def register(registry: kopf.OperatorRegistry, cfg: Config | None = None) -> Context:
    """Register the operator's handlers into `registry`; returns their shared context."""
    ctx = Context(cfg or Config.from_env())
    resource = (GROUP, VERSION, PLURAL)
    quiet = {"errors": kopf.ErrorsMode.IGNORED}  # the timer retries at its next tick

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # kopf's bookkeeping goes to annotations, so the status is the sweep's alone.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="critbatch.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="critbatch.dev", key="last-handled-configuration")
        settings.posting.level = logging.WARNING
        ctx.kube = Kube(make_api_client(ctx.cfg.kube_server))

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if ctx.cfg.kube_server:
            return kopf.ConnectionInfo(server=ctx.cfg.kube_server, insecure=True)
        return kopf.login_via_client(**kwargs)

    @kopf.on.resume(*resource, registry=registry, **quiet)
    @kopf.on.create(*resource, registry=registry, **quiet)
    @kopf.on.update(*resource, field="spec", registry=registry, **quiet)
    async def changed(body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
        await ctx.run(body, logger, force=True)  # a new spec may be the fix: no backoff

    @kopf.timer(*resource, interval=ctx.cfg.reconcile_interval, registry=registry, **quiet)
    async def tick(body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
        await ctx.run(body, logger)

    @kopf.on.delete(*resource, optional=True, registry=registry)
    def deleted(body: kopf.Body, **_: Any) -> None:
        # Jobs go with the sweep through their ownerReferences (the garbage collector).
        meta = body.get("metadata", {})
        opmetrics.forget(meta.get("namespace") or "default", meta.get("name"))
        ctx.states.pop(meta.get("uid") or meta.get("name"), None)

    return ctx


CONTEXT = register(kopf.get_default_registry())
