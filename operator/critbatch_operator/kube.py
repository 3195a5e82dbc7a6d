"""The Kubernetes API calls the operator makes, and nothing else (see docs/operator.md, RBAC).

Blocking calls of the official client; the async handlers run them in threads. Every call
returns plain dicts.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from critbatch.clock import utc_now
from critbatch.spec import GROUP, PLURAL, VERSION


def make_api_client(server: str | None = None) -> client.ApiClient:
    """An API client: `server` when given, else in-cluster config, else the kubeconfig."""
    if server:
        cfg = client.Configuration()
        cfg.host = server
        cfg.verify_ssl = False
        return client.ApiClient(cfg)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def _json(resp: Any) -> Any:
    return json.loads(resp.data or b"null")


class JobNameTaken(Exception):
    """A Job of that name exists and is not owned by the sweep that wants the name."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"Job {name} exists and is not this sweep's: {why}")
        self.name = name
        self.why = why


def owner_refs(obj: Mapping[str, Any]) -> list[dict]:
    """An object's ownerReferences (the well-formed ones)."""
    refs = (obj.get("metadata") or {}).get("ownerReferences")
    return [r for r in refs if isinstance(r, dict)] if isinstance(refs, list) else []


def owned_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    """Whether an ownerReference of `obj` is the object with this uid."""
    return bool(uid) and any(r.get("uid") == uid for r in owner_refs(obj))


def foreign_reason(job: Mapping[str, Any]) -> str:
    """Why a Job is not the sweep's, for a message: its owners' kinds and names."""
    refs = owner_refs(job)
    why = "it has no owner"
    if refs:
        why = "it is owned by " + ", ".join(
            f"{r.get('kind')} {r.get('name')} (uid {r.get('uid')})" for r in refs[:2])
    if (job.get("metadata") or {}).get("deletionTimestamp"):
        why += ", and is being deleted"
    return why


def _unless(status: int, call: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
    """True once `call` succeeds; False when the API answers `status` (the object already
    exists, or is already gone); any other error raises."""
    try:
        call(*args, **kwargs, _preload_content=False)
    except ApiException as exc:
        if exc.status == status:
            return False
        raise
    return True


class Kube:
    """Jobs, pods, Services and sweeps of one cluster (typed client calls, plain dicts back)."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def list_jobs(self, namespace: str, selector: str) -> list[dict]:
        resp = self.batch.list_namespaced_job(namespace, label_selector=selector,
                                              _preload_content=False)
        return list((_json(resp) or {}).get("items") or [])

    def list_pods(self, namespace: str, selector: str) -> list[dict]:
        resp = self.core.list_namespaced_pod(namespace, label_selector=selector,
                                             _preload_content=False)
        return list((_json(resp) or {}).get("items") or [])

    def find_job(self, namespace: str, name: str) -> dict | None:
        """The Job of that name, through `list` (the verb the operator has) by field."""
        resp = self.batch.list_namespaced_job(namespace, field_selector=f"metadata.name={name}",
                                              _preload_content=False)
        items = (_json(resp) or {}).get("items") or []
        return next((j for j in items if (j.get("metadata") or {}).get("name") == name), None)

    def create_job(self, namespace: str, job: dict) -> bool:
        """Create; False when a Job of that name exists and is owned by the same sweep (a 409
        on a deterministic name is success). JobNameTaken when the existing Job is someone
        else's (no ownerReference to the sweep's uid): it is never adopted."""
        try:
            self.batch.create_namespaced_job(namespace, job, _preload_content=False)
        except ApiException as exc:
            if exc.status != 409:
                raise
        else:
            return True
        name = job["metadata"]["name"]
        existing = self.find_job(namespace, name)
        if existing is None:
            return False  # gone again since the 409: the next reconcile creates it
        if any(owned_by(existing, r.get("uid")) for r in owner_refs(job)):
            return False
        raise JobNameTaken(name, foreign_reason(existing))

    def delete_job(self, namespace: str, name: str) -> bool:
        """Delete a Job and (in the background) its pods; False when it was already gone."""
        return _unless(404, self.batch.delete_namespaced_job, name, namespace,
                       propagation_policy="Background")

    def create_service(self, namespace: str, service: dict) -> bool:
        """Create; False when one of that name exists (the trial's, from before a restart)."""
        return _unless(409, self.core.create_namespaced_service, namespace, service)

    def delete_service(self, namespace: str, name: str) -> bool:
        """Delete a Service; False when it was already gone."""
        return _unless(404, self.core.delete_namespaced_service, name, namespace)

    def get_sweep(self, namespace: str, name: str) -> dict | None:
        try:
            resp = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                            name, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return _json(resp)

    def post_event(self, involved: Mapping[str, Any], type_: str, reason: str,
                   message: str) -> None:
        """A core/v1 Event about the sweep, with a unique name of its own (no generateName)."""
        meta = involved.get("metadata") or {}
        ns = meta.get("namespace") or "default"
        now = utc_now()
        self.core.create_namespaced_event(ns, {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta.get('name')}.{uuid.uuid4().hex[:16]}", "namespace": ns},
            "involvedObject": {"apiVersion": involved.get("apiVersion"),
                               "kind": involved.get("kind"), "name": meta.get("name"),
                               "namespace": ns, "uid": meta.get("uid")},
            "type": type_, "reason": reason, "message": message,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "source": {"component": "critbatch-operator"},
            "reportingComponent": "critbatch-operator",
        }, _preload_content=False)

    def patch_status(self, namespace: str, name: str, status: dict) -> None:
        """A JSON merge patch of the status subresource."""
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status},
            _content_type="application/merge-patch+json", _preload_content=False)
