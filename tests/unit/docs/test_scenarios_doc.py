"""docs/scenarios.md is the generated scenario reference, complete and up to date."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from triserve.bench import cli as bench_cli
from triserve.bench.scenario_doc import scenario_reference
from triserve.sim.profiles import PROFILES
from triserve.sim.scenario import bundled_scenarios_dir

DOC = Path(__file__).resolve().parents[3] / "docs" / "scenarios.md"


def test_docs_scenarios_md_is_the_generated_reference() -> None:
    assert DOC.read_text() == scenario_reference(), (
        "docs/scenarios.md is stale: triserve bench --scenario-schema > docs/scenarios.md"
    )


def test_the_cli_prints_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_cli.main(["--scenario-schema"]) == 0
    assert capsys.readouterr().out == scenario_reference()


def test_every_profile_is_listed_with_its_datasheet_figures() -> None:
    text = scenario_reference()
    for key, p in PROFILES.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{key}` |"))
        assert p.name in row and f"{p.min_clock_mhz}-{p.max_clock_mhz}" in row
        assert f"{p.power_limit_default_w:g}" in row


def _keys(node: object, prefix: str = "") -> set[str]:
    if isinstance(node, dict):
        out = set()
        for k, v in node.items():
            out.add(str(k))
            if k not in ("media_mix", "media_tokens"):  # maps: their keys are data
                out |= _keys(v)
        return out
    if isinstance(node, list):
        return set().union(*(_keys(v) for v in node)) if node else set()
    return set()


@pytest.mark.parametrize("path", sorted(bundled_scenarios_dir().glob("*.yaml")), ids=str)
def test_every_field_a_bundled_scenario_uses_is_documented(path: Path) -> None:
    text = scenario_reference()
    used = _keys(yaml.safe_load(path.read_text()))
    missing = sorted(k for k in used if f"| `{k}` |" not in text)
    assert missing == []
