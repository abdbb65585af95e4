"""Every example manifest is accepted, and every invalid one rejected naming its field."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from tests.unit.api import apiserver
from triserve.api import PolicyError, load_policy_file
from triserve.api.models import EnergyPolicySpec, Strategy

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
VALID = sorted(EXAMPLES.glob("energypolicy-*.yaml"))
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))


def _expected_field(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect-error: "), f"{path} must start with '# expect-error: FIELD'"
    return first.removeprefix("# expect-error: ").strip()


def test_there_are_valid_and_invalid_examples() -> None:
    assert len(VALID) >= 3
    assert len(INVALID) >= 5


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_example_is_accepted_by_the_crd_schema_and_cel(path: Path) -> None:
    assert apiserver.validate(yaml.safe_load(path.read_text())) == []


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_example_loads_as_a_policy_file(path: Path) -> None:
    policy = load_policy_file(path)
    assert policy.metadata.name


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_example_is_rejected_by_the_api_server_naming_the_field(path: Path) -> None:
    errors = apiserver.validate(yaml.safe_load(path.read_text()))
    field = _expected_field(path)
    assert errors, f"{path.name} was accepted"
    assert any(field in e for e in errors), errors


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_example_is_rejected_by_the_agent_naming_file_and_field(path: Path) -> None:
    field = _expected_field(path)
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    message = str(info.value)
    assert str(path) in message
    assert field.split("[")[0] in message, message


def _aliases(model: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    """Each field's YAML name, with its nested model (None for plain values)."""
    out: dict[str, type[BaseModel] | None] = {}
    for name, info in model.model_fields.items():
        nested = None
        for arg in (info.annotation, *typing.get_args(info.annotation)):
            inner = typing.get_args(arg) or (arg,)
            nested = next(
                (a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), nested
            )
        out[info.alias or name] = nested
    return out


def _missing(model: type[BaseModel], data: object, where: str) -> list[str]:
    if isinstance(data, list):
        return [m for item in data[:1] for m in _missing(model, item, f"{where}[0]")]
    assert isinstance(data, dict), where
    missing = []
    for key, nested in _aliases(model).items():
        if key not in data:
            missing.append(f"{where}.{key}")
        elif nested is not None and data[key] not in ([], {}):
            missing += _missing(nested, data[key], f"{where}.{key}")
    return missing


def test_the_full_example_spells_out_every_field() -> None:
    full = yaml.safe_load((EXAMPLES / "energypolicy-full.yaml").read_text())
    assert _missing(EnergyPolicySpec, full["spec"], "spec") == []


def test_there_is_an_example_of_every_strategy() -> None:
    strategies = {
        (yaml.safe_load(p.read_text())["spec"] or {}).get("strategy", "TriServe") for p in VALID
    }
    assert {s.value for s in Strategy} - {"Default"} <= strategies
