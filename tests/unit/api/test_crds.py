"""The CRDs in crds/ are generated from the models, current, and shaped as users expect."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from triserve.api import crds

ROOT = Path(__file__).resolve().parents[3]


def test_committed_crds_are_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    assert crds.main(["--check", "--out", str(ROOT / "crds")]) == 0


def test_check_reports_a_stale_file_with_a_diff(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert crds.main(["--out", str(tmp_path)]) == 0
    stale = tmp_path / "triserve.io_energypolicies.yaml"
    stale.write_text(stale.read_text().replace("enpol", "ep"))
    assert crds.main(["--check", "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "-    - ep" in captured.out and "+    - enpol" in captured.out
    assert "run `triserve crds`" in captured.err


def _policy_crd() -> dict[str, object]:
    doc: dict[str, object] = yaml.safe_load(
        (ROOT / "crds/triserve.io_energypolicies.yaml").read_text()
    )
    return doc


def test_energypolicy_crd_is_cluster_scoped_with_status_short_name_and_category() -> None:
    spec = _policy_crd()["spec"]
    assert isinstance(spec, dict)
    assert spec["scope"] == "Cluster"
    assert spec["names"]["shortNames"] == ["enpol"]
    assert spec["names"]["categories"] == ["triserve"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == [
        "Mode", "Strategy", "SLO", "Over", "Nodes", "GPUs", "Saving", "Budget", "Allocated",
        "Measured", "Ready", "Age",
    ]  # fmt: skip


def _walk(node: object, path: str = "") -> list[tuple[str, dict[str, object]]]:
    found: list[tuple[str, dict[str, object]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for name, sub in node.get("properties", {}).items():
            found += _walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            found += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            found += _walk(node["additionalProperties"], f"{path}{{}}")
    return found


@pytest.mark.parametrize("name", ["energypolicies", "nodeenergyreports"])
def test_schema_is_structural(name: str) -> None:
    doc = yaml.safe_load((ROOT / f"crds/triserve.io_{name}.yaml").read_text())
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "type" in node, f"{path} has no type"
        assert "$ref" not in node and "anyOf" not in node, path
        assert node.get("additionalProperties") is not False, path


def test_every_spec_field_is_described() -> None:
    schema = _policy_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[index]
    for path, node in _walk(schema["properties"]["spec"]):
        if path and not path.endswith(("{}", "[]")):
            assert node.get("description"), f"spec{path} has no description"


def test_clock_limit_rule_is_a_cel_validation() -> None:
    text = (ROOT / "crds/triserve.io_energypolicies.yaml").read_text()
    assert "x-kubernetes-validations" in text
    assert "minMHz must be <= maxMHz" in text
