"""Component T: an online thermal model, and a hot GPU held below its slowdown threshold."""

from __future__ import annotations

import itertools
import math

import pytest

from triserve.control import ControlSettings, DefaultStrategy, Reason
from triserve.control.thermal import ThermalModel

from .conftest import Run, drive, short


def test_the_thermal_model_learns_an_rc_circuit_from_samples() -> None:
    r_c_per_w, tau_s, ambient_c = 0.065, 30.0, 25.0
    model = ThermalModel()
    temp_c = 40.0
    for i in range(400):
        power_w = 150.0 + 500.0 * ((i // 40) % 2)  # alternating busy and quiet spells
        t_inf = ambient_c + r_c_per_w * power_w
        new_c = t_inf + (temp_c - t_inf) * math.exp(-1.0 / tau_s)
        model.update(power_w, 0.5 * (temp_c + new_c), new_c - temp_c)
        temp_c = new_c
    assert model.fitted
    assert abs(model.steady_state_c(600.0) - (ambient_c + r_c_per_w * 600.0)) < 2.0
    limit_c = 80.0
    assert abs(model.sustainable_power_w(limit_c) - (limit_c - ambient_c) / r_c_per_w) < 40.0


# Slow: 300 simulated seconds of a hot GPU, twice, under the control loop (about 6 s).
@pytest.mark.slow
def test_a_hot_gpu_is_held_below_slowdown_instead_of_throttling() -> None:
    scenario = short("hot", 300.0)
    default = drive(scenario, ControlSettings().only("T"), strategy=lambda g: DefaultStrategy())
    thermal = drive(scenario, ControlSettings().only("T"))
    slowdown_c = thermal.loops[0].limits.thresholds.slowdown_c

    def throttled_s(run: Run) -> float:
        return sum(
            later.now_s - t.now_s
            for ticks in run.ticks.values()
            for t, later in itertools.pairwise(ticks)
            if later.sample.clock_event_reasons.is_thermal
        )

    assert throttled_s(default) > 5.0, "the hot scenario should throttle under the PMU"
    assert throttled_s(thermal) < 0.2 * throttled_s(default)
    hottest_c = max(t.sample.temperature_c for ticks in thermal.ticks.values() for t in ticks)
    assert hottest_c < slowdown_c
    reasons = {t.decision.reason for ticks in thermal.ticks.values() for t in ticks}
    assert Reason.THERMAL in reasons
