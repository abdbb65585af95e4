"""ControlLoop: Observe never actuates, release restores, limits hold; each tick counted once."""

from __future__ import annotations

from dataclasses import replace

import pytest

from triserve.api.models import EnergyPolicySpec
from triserve.control import ControlLoop, ControlSettings, Decision, Reason, StrategyKind
from triserve.control.settings import IntensitySource
from triserve.sim import Scenario, Simulation

from .conftest import drive


def test_observe_mode_decides_but_never_sets_anything(reference_30s_ideal: Scenario) -> None:
    # Ideal counters: the point is that decisions (ridge included) are never applied.
    run = drive(reference_30s_ideal, ControlSettings(actuate=False))
    for g, loop in run.loops.items():
        assert run.sim.backend.locked_sm_clocks_mhz(g) is None
        assert loop.clock_sets == 0 and loop.power_sets == 0
        assert all(t.lock is None for t in run.ticks[g])
    reasons = {t.decision.reason for ticks in run.ticks.values() for t in ticks}
    assert {Reason.STALL, Reason.RIDGE} <= reasons


def test_release_restores_default_clocks(reference_30s: Scenario) -> None:
    run = drive(reference_30s, ControlSettings())
    assert any(t.lock is not None for ticks in run.ticks.values() for t in ticks)
    for g, loop in run.loops.items():
        loop.release()
        assert run.sim.backend.locked_sm_clocks_mhz(g) is None


def test_release_restores_the_power_limit_it_changed(reference_30s: Scenario) -> None:
    sim = Simulation(reference_30s)
    default_mw = sim.backend.power_limit_mw(0)
    settings = ControlSettings(strategy=StrategyKind.POWER_CAP, power_cap_w=400)
    loop = ControlLoop(sim.backend, 0, None, settings)
    for i in range(5):
        sim.run_until(0.05 * (i + 1))
        loop.tick(sim.now_s, [])
    assert sim.backend.power_limit_mw(0) == 400_000
    assert loop.power_sets == 1  # set once, not every tick
    loop.release()
    assert sim.backend.power_limit_mw(0) == default_mw


def test_setters_are_called_only_when_the_target_changes(reference_30s: Scenario) -> None:
    run = drive(reference_30s, ControlSettings())
    for g, loop in run.loops.items():
        changes = sum(
            1 for a, b in zip(run.ticks[g], run.ticks[g][1:], strict=False) if a.lock != b.lock
        )
        assert loop.clock_sets <= changes + 1
        assert loop.clock_sets < len(run.ticks[g])


def test_locks_stay_inside_the_policy_clock_limits(reference_30s: Scenario) -> None:
    settings = ControlSettings(clock_min_mhz=900, clock_max_mhz=1500)
    run = drive(reference_30s, settings)
    supported = set(run.sim.backend.supported_sm_clocks_mhz(0))
    for ticks in run.ticks.values():
        for t in ticks:
            assert t.lock is not None  # a policy-limited GPU is never handed to the boost clock
            assert 900 <= t.lock[0] <= t.lock[1] <= 1500
            assert t.lock[1] in supported


def test_the_agent_counts_every_tick_once_and_measures_energy(reference_30s: Scenario) -> None:
    run = drive(reference_30s, ControlSettings())
    for g in run.loops:
        totals = run.agent.gpus[g].totals
        assert sum(totals.decisions.values()) == len(run.ticks[g])
        assert 0 < totals.energy_j <= run.sim.gpus[g].energy_j


def test_settings_follow_the_policy_spec() -> None:
    spec = EnergyPolicySpec.model_validate(
        {
            "mode": "Observe",
            "tri_serve": {
                "dependency_stalls": {"enabled": False},
                "arithmetic_intensity": {"source": "Phase"},
                "thermal": {"headroom_c": 5.0},
            },
            "clock_limits": {"min_mhz": 600, "max_mhz": 1800},
            "slo": {"max_latency_increase_percent": 2.0},
            "control_interval_ms": 100,
        }
    )
    s = ControlSettings.from_policy(spec)
    assert s.strategy is StrategyKind.TRI_SERVE
    assert not s.actuate and not s.stalls_enabled and s.intensity_enabled
    assert s.intensity_source is IntensitySource.SEARCH  # "Phase" is an alias of Search
    assert s.thermal_headroom_c == 5.0
    assert (s.clock_min_mhz, s.clock_max_mhz) == (600, 1800)
    assert s.max_latency_increase_pct == 2.0 and s.control_interval_s == 0.1
    static = ControlSettings.from_policy(
        EnergyPolicySpec.model_validate(
            {"strategy": "StaticClock", "static_clock": {"sm_clock_mhz": 1200}}
        )
    )
    assert static.strategy is StrategyKind.STATIC_CLOCK and static.static_clock_mhz == 1200


def test_settings_reject_what_cannot_run() -> None:
    with pytest.raises(ValueError, match="static_clock_mhz"):
        ControlSettings(strategy=StrategyKind.STATIC_CLOCK)
    with pytest.raises(ValueError, match="component"):
        ControlSettings().only("X")
    assert replace(ControlSettings(), slo_guard=False).only("A").intensity_enabled


def test_a_clock_range_with_no_supported_clock_is_refused(reference_30s: Scenario) -> None:
    sim = Simulation(reference_30s)
    with pytest.raises(ValueError, match="clockLimits"):
        ControlLoop(sim.backend, 0, None, ControlSettings(clock_min_mhz=100, clock_max_mhz=200))


def test_hold_default_hands_the_clock_back_then_the_strategy_resumes(
    reference_30s: Scenario,
) -> None:
    sim = Simulation(reference_30s, seed=0)
    settings = ControlSettings(strategy=StrategyKind.STATIC_CLOCK, static_clock_mhz=1005)
    loop = ControlLoop(sim.backend, 0, None, settings)
    sim.run_until(0.05)
    loop.tick(sim.now_s, [])
    lock = sim.backend.locked_sm_clocks_mhz(0)
    assert lock is not None and not loop.at_default
    loop.hold_default(sim.now_s + 0.325)  # the next 6 ticks
    held = []
    for _ in range(6):
        sim.run_until(sim.now_s + 0.05)
        held.append(loop.tick(sim.now_s, []).decision)
        assert sim.backend.locked_sm_clocks_mhz(0) is None and loop.at_default
    assert all(d.reason is Reason.DEFAULT and "baseline probe" in d.message for d in held)
    assert all(d.target_sm_clock_mhz is None for d in held)
    sim.run_until(sim.now_s + 0.05)
    loop.tick(sim.now_s, [])
    assert not loop.holding_default and not loop.at_default
    assert sim.backend.locked_sm_clocks_mhz(0) == lock
    assert loop.clock_sets == 3  # lock, probe's reset, lock again: no set per tick


def test_hold_default_does_nothing_in_observe_mode(reference_30s: Scenario) -> None:
    sim = Simulation(reference_30s, seed=0)
    loop = ControlLoop(sim.backend, 0, None, ControlSettings(actuate=False))
    loop.hold_default(5.0)
    assert not loop.holding_default
    sim.run_until(0.05)
    decision = loop.tick(sim.now_s, []).decision
    assert "baseline probe" not in decision.message
    assert loop.clock_sets == 0 and loop.at_default


def test_a_thermal_cap_ends_a_hold(reference_30s: Scenario) -> None:
    class Hot:
        name = "hot"

        def decide(self, ctx: object) -> Decision:
            return Decision(800, Reason.THERMAL, "too hot")

    sim = Simulation(reference_30s, seed=0)
    loop = ControlLoop(sim.backend, 0, Hot(), ControlSettings())
    loop.hold_default(5.0)
    sim.run_until(0.05)
    assert loop.tick(sim.now_s, []).decision.reason is Reason.THERMAL
    assert not loop.holding_default
    assert sim.backend.locked_sm_clocks_mhz(0) is not None
