"""The CRDs on a real API server: accepted, and every invalid example refused naming its field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.apiserver.conftest import REPO, get_json
from tests.apiserver.controlplane import ControlPlane

EXAMPLES = REPO / "examples"
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))
VALID = sorted(EXAMPLES.glob("energypolicy-*.yaml"))


def _expected_field(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect-error: "), f"{path.name} must say which field is wrong"
    return first.removeprefix("# expect-error: ").strip()


def test_the_crds_are_established_with_their_printer_columns(crds: ControlPlane) -> None:
    crd = get_json(crds, "crd", "energypolicies.triserve.io")
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True" and conditions["NamesAccepted"] == "True"
    assert get_json(crds, "crd", "nodeenergyreports.triserve.io") is not None
    columns = crds.kubectl("get", "enpol").stderr + crds.kubectl("get", "ner").stderr
    assert "No resources found" in columns


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_every_example_policy_is_accepted(crds: ControlPlane, path: Path) -> None:
    result = crds.kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_every_invalid_example_is_refused_naming_the_field(crds: ControlPlane, path: Path) -> None:
    result = crds.kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
    assert result.returncode != 0, f"{path.name} was accepted"
    assert _expected_field(path) in result.stderr, result.stderr


def test_a_policy_name_too_long_for_a_node_label_is_refused(crds: ControlPlane) -> None:
    policy = yaml.safe_load((EXAMPLES / "energypolicy-minimal.yaml").read_text())
    policy["metadata"]["name"] = "p" * 64
    result = crds.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(policy), check=False)
    assert result.returncode != 0
    assert "metadata.name must be at most 63 characters" in result.stderr, result.stderr
    policy["metadata"]["name"] = "p" * 63
    result = crds.kubectl("apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(policy))
    assert result.returncode == 0
