"""What the API server does to a custom object before storing it, for tests without a cluster.

Applies schema defaults, validates against the CRD's openAPIV3Schema with unknown fields
rejected (kubectl's default `--validate=strict`), then evaluates every CEL
`x-kubernetes-validations` rule with cel-python. Returns `path: message` strings.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml
from celpy.adapter import json_to_cel

CRD_DIR = Path(__file__).resolve().parents[3] / "crds"


def load_schema(plural: str) -> dict[str, Any]:
    """The openAPIV3Schema of `crds/triserve.io_<plural>.yaml`."""
    crd = yaml.safe_load((CRD_DIR / f"triserve.io_{plural}.yaml").read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
        if "properties" in node and "additionalProperties" not in node:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(item) for item in node]
    return node


def apply_defaults(obj: Any, schema: dict[str, Any]) -> Any:
    """Fill in schema defaults the way the API server's structural defaulting does."""
    if isinstance(obj, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                obj[name] = apply_defaults(obj[name], sub)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(item, schema["items"]) for item in obj]
    return obj


def _cel_errors(obj: Any, schema: dict[str, Any], path: str) -> list[str]:
    errors: list[str] = []
    env = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations", []):
        program = env.program(env.compile(rule["rule"]))
        if not bool(program.evaluate({"self": json_to_cel(obj)})):
            errors.append(f"{path}{rule.get('fieldPath', '')}: {rule['message']}")
    if isinstance(obj, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in obj:
                errors += _cel_errors(obj[name], sub, f"{path}.{name}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            errors += _cel_errors(item, schema["items"], f"{path}[{i}]")
    return errors


def validate(manifest: dict[str, Any], plural: str = "energypolicies") -> list[str]:
    """Every error the API server would report for `manifest`; empty when it is accepted."""
    schema = load_schema(plural)
    obj = apply_defaults(copy.deepcopy(manifest), schema)
    validator = jsonschema.Draft7Validator(_strict(schema))
    errors = []
    for err in validator.iter_errors(obj):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            known = err.schema.get("properties", {})
            unknown = [k for k in err.instance if k not in known]
            errors += [f'unknown field "{path.lstrip(".")}.{k}"' for k in unknown]
            continue
        errors.append(f"{path.lstrip('.')}: {err.message}")
    if errors:
        return errors
    return [e.lstrip(".") for e in _cel_errors(obj, schema, "")]
