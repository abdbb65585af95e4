"""Component T: an online thermal model, and a hot GPU held below its slowdown threshold."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest

from tests.unit.decode_stage import DecodeStage
from triserve.control import (
    ControlSettings,
    Decision,
    DefaultStrategy,
    DeviceLimits,
    IntensitySource,
    Reason,
    StageSignals,
    TickContext,
)
from triserve.control.thermal import ThermalModel
from triserve.control.tristrategy import TriServeStrategy
from triserve.sim import Simulation, load_scenario

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


def test_a_heat_limited_gpu_counts_the_ridge_allowance_from_its_ceiling() -> None:
    """While T holds a ceiling, a decode's ridge lock goes lower: the PMU default would run
    it at about that ceiling too, so the lock's loss allowance is counted from there (the
    watts it gives up cool the GPU for the prefills); without a ceiling, or with one the
    lock is far under, the ridge lock stands, and the lock never goes below A's floor."""
    limits = DeviceLimits.from_backend(Simulation(load_scenario("reference")).backend, 0)
    boost = limits.default_max_mhz
    ridge = (("talker", "decode", 1200),)
    settings = ControlSettings(
        intensity_source=IntensitySource.PROFILE, ridge_profile=ridge, first_token_floor=False
    )
    sample = Simulation(load_scenario("reference")).backend.sample(0)
    busy = StageSignals(True, False, False, False, 0.0, 4)

    def run(cap_mhz: int | None, floor: float = 0.35) -> Decision:
        strategy = TriServeStrategy(replace(settings, ridge_floor_fraction=floor))
        strategy.thermal.update = lambda ctx: cap_mhz  # type: ignore[method-assign]
        stage = DecodeStage()
        decision = None
        for i in range(5):  # phase detection needs two scrapes
            obs = stage.observe(i * 0.25, 0.02)
            decision = strategy.decide(TickContext(i * 0.25, 0.25, sample, [obs], busy, limits))
        assert decision is not None
        return decision

    uncapped = run(None)
    assert uncapped.reason is Reason.RIDGE
    locked = uncapped.target_sm_clock_mhz
    assert locked is not None and locked < boost
    capped = run(1500)
    assert capped.reason is Reason.THERMAL and capped.target_sm_clock_mhz is not None
    expected = 1.0 / (1.0 / 1500 + 1.0 / locked - 1.0 / boost)
    assert expected <= capped.target_sm_clock_mhz < expected + 60
    assert "counted from the 1500 MHz ceiling" in capped.message
    assert run(1500, floor=0.7).target_sm_clock_mhz == limits.snap_up(0.7 * boost)
    # A ceiling at boost leaves the ridge lock as it is.
    assert run(boost).target_sm_clock_mhz == locked
