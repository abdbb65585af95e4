"""Every example manifest is accepted, and every invalid one rejected naming its field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.unit.api import apiserver
from triserve.api import PolicyError, load_policy_file

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
