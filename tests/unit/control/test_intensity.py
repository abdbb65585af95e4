"""Component A: memory-bound phases run at their ridge clock, compute-bound ones at boost."""

from __future__ import annotations

from dataclasses import replace

from triserve.control import ControlSettings, IntensitySource, Reason
from triserve.control.intensity import RIDGE_MEMORY_TICKS
from triserve.sim import Phase, Scenario, Simulation

from .conftest import Tick, drive


def _no_loss_clock(sim: Simulation, gpu: int, phase: Phase, slowdown: float) -> int:
    """The lowest supported clock within `slowdown` of the phase's boost-clock speed."""
    profile = sim.gpus[gpu].profile
    clocks = profile.supported_clocks_mhz
    best_s = phase.at(profile, clocks[-1]).round_s
    return next(c for c in clocks if phase.at(profile, c).round_s <= best_s * (1 + slowdown))


def _steady(ticks: list[Tick], kind: str) -> list[tuple[Tick, Tick]]:
    """(previous, current) ticks where one phase of `kind` ran for the controller's memory."""
    span = RIDGE_MEMORY_TICKS + 1
    return [
        (ticks[i - 1], ticks[i])
        for i in range(span, len(ticks))
        if ticks[i].phase == kind
        and all(t.phase_obj is ticks[i].phase_obj for t in ticks[i - span : i])
    ]


def test_a_memory_bound_decode_gets_its_ridge_clock(reference_30s: Scenario) -> None:
    settings = replace(ControlSettings().only("A"), ridge_floor_fraction=0.0)
    run = drive(reference_30s, settings)
    checked = 0
    for gpu, ticks in run.ticks.items():
        for _, cur in _steady(ticks, "decode"):
            assert cur.phase_obj is not None
            ridge = _no_loss_clock(run.sim, gpu, cur.phase_obj, 0.01)
            if ridge >= run.loops[gpu].limits.default_max_mhz:
                continue
            assert cur.decision.reason is Reason.RIDGE
            target = cur.decision.target_sm_clock_mhz
            assert target is not None
            assert target >= ridge - 15, "locked below the ridge: decode would slow down"
            checked += 1
    assert checked > 20


def test_the_ridge_lock_saves_clock_without_slowing_decode(reference_30s: Scenario) -> None:
    settings = replace(ControlSettings().only("A"), ridge_floor_fraction=0.0)
    run = drive(reference_30s, settings)
    ticks = run.ticks[0]
    locked = [b for _, b in _steady(ticks, "decode") if b.decision.reason is Reason.RIDGE]
    assert locked
    boost = run.loops[0].limits.default_max_mhz
    assert sum(t.sample.sm_clock_mhz for t in locked) / len(locked) < 0.8 * boost
    for t in locked:
        act = t.sample.activity
        assert act is not None
        # Memory stays the bottleneck at the ridge lock: DRAM saturated while busy.
        assert act.dram_active >= 0.95 * t.sample.utilization_gpu_pct / 100.0 - 1e-6


def test_compute_bound_prefill_gets_the_boost_clock(reference_30s: Scenario) -> None:
    run = drive(reference_30s, ControlSettings().only("A"))
    prefill = [b for _, b in _steady(run.ticks[0], "prefill")]
    assert prefill
    assert all(t.decision.target_sm_clock_mhz is None for t in prefill)
    assert all(t.decision.reason is Reason.COMPUTE for t in prefill)


def test_without_counters_the_serving_phase_picks_the_clock(reference_30s: Scenario) -> None:
    settings = replace(ControlSettings().only("A"), intensity_source=IntensitySource.PHASE)
    run = drive(reference_30s, settings)
    reasons = {t.decision.reason for t in run.ticks[0]}
    assert Reason.RIDGE in reasons  # decode-only scrape windows
    assert Reason.COMPUTE in reasons  # windows with prefill
