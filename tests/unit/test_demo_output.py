"""`triserve demo` explains itself: strategy-named result column, reason legend, plain summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from triserve import cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FAST = ["--duration-s", "75", "--speed", "300", "--metrics-port", "0"]


def test_tri_serve_demo_legend_wide_stages_and_plain_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["demo", *FAST]) == 0
    out = capsys.readouterr().out
    assert "code2wav,talker" in out  # the widest stage cell is printed whole
    assert "stall = the GPU waits on its upstream stage" in out and "parked" in out
    assert "ridge (source)" in out and "thermal =" in out
    assert "TriServe vs the PMU default" in out
    energy = next(line for line in out.splitlines() if line.startswith("Energy: "))
    assert "less energy" in energy or "more energy" in energy
    efficiency = next(line for line in out.splitlines() if line.startswith("Efficiency: "))
    assert (
        "tokens per joule" in efficiency and "Not the same number as the energy cut" in efficiency
    )


def test_static_clock_demo_names_its_strategy_not_triserve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "static.yaml"
    policy.write_text(
        "apiVersion: triserve.io/v1alpha1\nkind: EnergyPolicy\nmetadata: {name: s}\n"
        "spec: {strategy: StaticClock, staticClock: {smClockMHz: 1500}}\n"
    )
    assert cli.main(["demo", *FAST, "--policy", str(policy)]) == 0
    out = capsys.readouterr().out
    assert "StaticClock 1500 MHz vs the PMU default" in out
    assert "TriServe" not in out and "triserve vs" not in out
    assert "the StaticClock 1500 MHz policy sets every clock" in out
