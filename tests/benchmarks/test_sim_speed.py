"""Simulator speed: the reference scenario with a 50 ms sampling tick (target ≥100x real time).

Timing is recorded (pytest-benchmark when enabled, printed always), never asserted.
"""

from __future__ import annotations

from typing import Any

from triserve.sim.speed import measure_speed_factor


def test_reference_scenario_speed_factor(benchmark: Any) -> None:
    factor = benchmark.pedantic(
        measure_speed_factor, kwargs={"duration_s": 120.0}, rounds=1, iterations=1
    )
    benchmark.extra_info["speed_factor"] = factor
    print(f"\nreference scenario: {factor:.0f}x faster than real time")
    assert factor > 0
