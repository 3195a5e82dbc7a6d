"""Checking manifests against the CRD offline: its openAPIV3Schema as JSON Schema, its defaults,
and its CEL rules (x-kubernetes-validations) evaluated with cel-python.

What this does not reproduce of an API server: CEL cost budgets, ratcheting of unchanged
invalid values, the exact rendering of `fieldPath`/`reason`, and pruning of unknown fields
(here unknown fields are rejected, as `kubectl --validate=strict` does).
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml
from celpy import celtypes

ROOT = Path(__file__).resolve().parents[1]
CRD_PATH = ROOT / "crds" / "critbatch.dev_criticalbatchsweeps.yaml"


def load_crd() -> dict:
    return yaml.safe_load(CRD_PATH.read_text())


def openapi_schema(crd: dict | None = None) -> dict:
    crd = crd or load_crd()
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    return version["schema"]["openAPIV3Schema"]


def to_json_schema(node: Any) -> Any:
    """OpenAPI v3.0 (Kubernetes flavour) -> JSON Schema draft 4, strict about unknown fields."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items()
           if not k.startswith("x-kubernetes-") and k not in ("nullable", "default")}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    if (node.get("type") == "object" and "properties" in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
            and "additionalProperties" not in node):
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=1)
def _default_validator() -> jsonschema.Draft4Validator:
    return validator(load_crd())


def validator(crd: dict | None = None) -> jsonschema.Draft4Validator:
    if crd is None:
        return _default_validator()
    schema = to_json_schema(openapi_schema(crd))
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft4Validator(schema)


def schema_errors(manifest: dict, crd: dict | None = None) -> list[str]:
    """Each error as '<path>: <message>', the path in the manifest's own field names."""
    out = []
    for e in validator(crd).iter_errors(manifest):
        path = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in e.absolute_path)
        out.append(f"{path.replace('.[', '[')}: {e.message}")
    return out


def apply_defaults(schema: dict, value: Any) -> Any:
    """Structural defaulting as the API server does it: missing fields with a default get it,
    recursively (a defaulted {} gets its own fields' defaults)."""
    value = copy.deepcopy(value)
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(sub, value[key])
    elif isinstance(value, list) and "items" in schema:
        value = [apply_defaults(schema["items"], v) for v in value]
    return value


def to_cel(schema: dict, value: Any) -> Any:
    """A JSON value as CEL sees it under its schema: `number` fields are doubles even when
    written as integers."""
    if value is None:
        return None
    t = schema.get("type")
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if t == "number":
        return celtypes.DoubleType(float(value))
    if t == "integer":
        return celtypes.IntType(int(value))
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, int):
        return celtypes.IntType(value)
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, list):
        return celtypes.ListType([to_cel(schema.get("items") or {}, v) for v in value])
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        return celtypes.MapType({
            celtypes.StringType(k): to_cel(props.get(k) or (extra if isinstance(extra, dict)
                                                            else {}), v)
            for k, v in value.items()
        })
    raise TypeError(f"cannot convert {value!r}")


def rules(schema: dict | None = None, path: str = "") -> Iterator[tuple[str, dict, dict]]:
    """(path, schema node, rule) for every x-kubernetes-validations rule in the schema."""
    schema = schema or openapi_schema()
    for rule in schema.get("x-kubernetes-validations") or []:
        yield path, schema, rule
    for key, sub in (schema.get("properties") or {}).items():
        yield from rules(sub, f"{path}.{key}" if path else key)
    if "items" in schema:
        yield from rules(schema["items"], f"{path}[]")


_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def compile_rule(rule: str) -> Any:
    if rule not in _PROGRAMS:
        _PROGRAMS[rule] = _ENV.program(_ENV.compile(rule))
    return _PROGRAMS[rule]


def is_transition_rule(rule: str) -> bool:
    return "oldSelf" in rule


def _lookup(value: Any, path: str) -> tuple[bool, Any]:
    if not path:
        return True, value
    for part in path.split("."):
        if part.endswith("[]"):
            raise NotImplementedError("rules under list items are not used by this CRD")
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def cel_errors(manifest: dict, old: dict | None = None, crd: dict | None = None) -> list[str]:
    """Messages of the CEL rules the object (after defaulting) breaks; transition rules only
    when `old` is given and holds the field, as on an update."""
    if crd is None:
        return list(_cel_errors_cached(json.dumps(manifest, sort_keys=True),
                                       json.dumps(old, sort_keys=True)))
    return _cel_errors(manifest, old, crd)


@functools.lru_cache(maxsize=512)
def _cel_errors_cached(manifest: str, old: str) -> tuple[str, ...]:
    return tuple(_cel_errors(json.loads(manifest), json.loads(old), load_crd()))


def _cel_errors(manifest: dict, old: dict | None, crd: dict) -> list[str]:
    schema = openapi_schema(crd)
    obj = apply_defaults(schema, manifest)
    old_obj = apply_defaults(schema, old) if old is not None else None
    out = []
    for path, node, rule in rules(schema):
        present, value = _lookup(obj, path)
        if not present:
            continue
        activation = {"self": to_cel(node, value)}
        if is_transition_rule(rule["rule"]):
            if old_obj is None:
                continue
            old_present, old_value = _lookup(old_obj, path)
            if not old_present:
                continue
            activation["oldSelf"] = to_cel(node, old_value)
        result = compile_rule(rule["rule"]).evaluate(activation)
        if isinstance(result, Exception):
            raise result
        if not bool(result):
            out.append(rule.get("message") or f"{path}: failed {rule['rule']}")
    return out
