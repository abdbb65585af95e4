"""Readable validation errors and policy-file loading shared by the agent and the operator.

A user who wrote a bad manifest should see which field is wrong and what to do, e.g.
`spec.clockLimits: minMHz (1500) is above maxMHz (1000); lower minMHz …`, and, for a
file, which file. Callers: the standalone agent (`--policy FILE`) and the operator's
semantic validation (which turns the message into a status condition).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from triserve.api.models import EnergyPolicy, EnergyPolicySpec

_FIELD_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z][A-Za-z0-9]*)*): (.+)$", re.S)


class PolicyError(ValueError):
    """An EnergyPolicy (or its spec) failed validation; `str()` names every bad field."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(problems))


def _field_path(loc: tuple[int | str, ...], prefix: str) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def describe_validation_error(exc: ValidationError, prefix: str = "") -> list[str]:
    """One `field.path: message` line per problem, with Kubernetes (camelCase) field names."""
    problems = []
    for err in exc.errors(include_url=False):
        path = _field_path(tuple(err["loc"]), prefix) or "(top level)"
        message = str(err["msg"]).removeprefix("Value error, ")
        # Model-level checks name their field as a `field.path: ` prefix of the message.
        if match := _FIELD_PREFIX.match(message):
            path, message = f"{path}.{match[1]}" if path != "(top level)" else match[1], match[2]
        if err["type"] == "extra_forbidden":
            message = "unknown field; check its spelling against `kubectl explain enpol.spec`"
        problems.append(f"{path}: {message}")
    return problems


def parse_policy_spec(spec: dict[str, Any] | None) -> EnergyPolicySpec:
    """Validate a policy spec as read from the API server; raises PolicyError naming fields."""
    try:
        return EnergyPolicySpec.model_validate(spec or {})
    except ValidationError as exc:
        raise PolicyError(describe_validation_error(exc, prefix="spec")) from exc


def load_policy_file(path: Path) -> EnergyPolicy:
    """Read a whole EnergyPolicy manifest from YAML; raises PolicyError naming file and field."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise PolicyError([f"cannot read the file: {exc.strerror}"], str(path)) from exc
    except yaml.YAMLError as exc:
        raise PolicyError([f"not valid YAML: {exc}"], str(path)) from exc
    if not isinstance(document, dict):
        raise PolicyError(["expected one EnergyPolicy manifest (a YAML mapping)"], str(path))
    try:
        return EnergyPolicy.model_validate(document)
    except ValidationError as exc:
        raise PolicyError(describe_validation_error(exc), str(path)) from exc
