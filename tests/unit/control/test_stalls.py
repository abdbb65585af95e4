"""Component D: a stalled GPU drops to a low clock, and work brings the clock back."""

from __future__ import annotations

import itertools

from triserve.bench.runner import run_strategy
from triserve.control import ControlSettings, Reason
from triserve.control.signals import SignalTracker
from triserve.sim import Scenario, Simulation, with_overrides
from triserve.telemetry import ServingSnapshot, StageObservation

from .conftest import drive


def test_a_stall_locks_a_low_clock_and_work_restores_it(reference_30s: Scenario) -> None:
    run = drive(reference_30s, ControlSettings().only("D"))
    lowest = run.loops[1].limits.min_mhz
    ticks = run.ticks[1]
    stalls = [t for t in ticks if t.decision.reason is Reason.STALL]
    assert stalls, "the talker/code2wav GPU never stalled in 30 s"
    # Each stall tick holds the low lock, or releases it: to park once the clock is down,
    # or to leave an idle GPU with no upstream work to the driver's boost. This driver holds
    # its boost state for the resident context, so parking is tried once and then the lock
    # stays while upstream work is in flight.
    assert all(t.lock in {(lowest, lowest), None} for t in stalls)
    for t in stalls:
        if t.lock is None:
            assert t.sample.sm_clock_mhz <= lowest or "no upstream work" in t.decision.message
    parks = [t for t in stalls if t.lock is None and "parked" in t.decision.message]
    assert len(parks) <= 1, "kept parking on a driver that boosts an unlocked idle GPU"
    assert any(t.lock == (lowest, lowest) for t in stalls), "a boosted stall was never cut"
    restored = 0
    for prev, cur in itertools.pairwise(ticks):
        if prev.decision.reason is Reason.STALL and cur.decision.reason is not Reason.STALL:
            assert cur.lock is None  # handed back to the PMU's boost
            restored += 1
    assert restored > 0
    # Work never runs on for more than one tick under the stall lock.
    for prev, cur in itertools.pairwise(ticks):
        if prev.sample.utilization_gpu_pct > 0 and cur.sample.utilization_gpu_pct > 0:
            assert cur.decision.reason is not Reason.STALL


def test_busy_gpu_is_never_treated_as_stalled(reference_30s: Scenario) -> None:
    run = drive(reference_30s, ControlSettings().only("D"))
    for ticks in run.ticks.values():
        for t in ticks:
            if t.decision.reason is Reason.STALL:
                assert t.sample.utilization_gpu_pct < 3.0


def _snap(running: int, finished: float = 0.0) -> ServingSnapshot:
    return ServingSnapshot(1.0, running, 0, 0.0, 0.0, finished)


def test_a_gpu_with_two_stages_is_stalled_only_when_both_are_idle(
    reference_30s: Scenario,
) -> None:
    idle_sample = Simulation(reference_30s).backend.sample(1)
    tracker = SignalTracker()
    talker_busy = StageObservation("talker", serving=_snap(1), upstream=("thinker",))
    code2wav_idle = StageObservation("code2wav", serving=_snap(0), upstream=("talker",))
    assert not tracker.update(1.0, idle_sample, [talker_busy, code2wav_idle]).stalled
    talker_idle = StageObservation("talker", serving=_snap(0), upstream=("thinker",))
    assert tracker.update(1.05, idle_sample, [talker_idle, code2wav_idle]).stalled


def test_an_upstream_hand_off_pre_warms_the_clock(reference_30s: Scenario) -> None:
    idle_sample = Simulation(reference_30s).backend.sample(1)
    tracker = SignalTracker()
    up0 = (ServingSnapshot(1.0, 1, 0, 0.0, 0.0, 3.0),)
    up1 = (ServingSnapshot(1.25, 0, 0, 0.0, 0.0, 4.0),)
    first = StageObservation("talker", serving=_snap(0), upstream_serving=up0)
    second = StageObservation("talker", serving=_snap(0), upstream_serving=up1)
    assert not tracker.update(1.0, idle_sample, [first]).work_imminent
    signals = tracker.update(1.25, idle_sample, [second])
    assert signals.stalled and signals.work_imminent


def test_d_alone_cuts_energy_spent_stalled_at_high_clock() -> None:
    from triserve.bench.catalog import spec_for

    from .conftest import short

    scenario = short("reference", 60.0)
    default = run_strategy(scenario, spec_for("default")).result
    only_d = run_strategy(scenario, spec_for("tri-serve-D")).result
    assert only_d.energy_j < default.energy_j
    assert only_d.stall_high_s <= default.stall_high_s


def test_where_the_driver_drops_idle_clocks_parking_stays_low_and_prefill_starts_at_boost() -> None:
    """CUDA_DISABLE_PERF_BOOST=1: a parked stall leaves no lock behind and stays low."""
    from .conftest import short

    scenario = with_overrides(short("reference", 120.0), {"pmu.perf_boost": False})
    default = Simulation(scenario, seed=0)
    default.run_until(scenario.duration_s)
    only_d = drive(scenario, ControlSettings().only("D"))
    parks = [t for t in only_d.ticks[1] if t.lock is None and "parked" in t.decision.message]
    assert len(parks) > 1
    default_mhz = default.report().mean_clock_mhz("prefill")
    only_d_mhz = only_d.sim.report().mean_clock_mhz("prefill")
    assert default_mhz is not None and only_d_mhz is not None, "no prefill ran"
    assert only_d_mhz >= 0.99 * default_mhz


def test_an_idle_first_stage_is_left_at_boost_so_requests_start_as_fast_as_default() -> None:
    """Context-held boost: holding a lock on an idle thinker would slow the next prefill.

    (A stall with upstream work in flight keeps its lock, so the talker's prefill may still
    start a tick late: that cost shows in the bench's latency columns.)
    """
    from .conftest import short

    scenario = short("reference", 120.0)
    default = Simulation(scenario, seed=0)
    default.run_until(scenario.duration_s)
    only_d = drive(scenario, ControlSettings().only("D"))
    default_mhz = default.report().gpus[0].mean_clock_mhz_by_phase["prefill"]
    only_d_mhz = only_d.sim.report().gpus[0].mean_clock_mhz_by_phase["prefill"]
    assert default_mhz is not None and only_d_mhz is not None, "no prefill ran"
    assert only_d_mhz >= 0.99 * default_mhz


def test_with_no_work_anywhere_only_the_gpu_that_takes_new_requests_is_left_at_boost() -> None:
    """The thinker GPU sees new requests first; the talker GPU only after the thinker works."""
    from .conftest import short

    run = drive(short("reference", 240.0), ControlSettings().only("D"))
    no_work = "no upstream work"
    talker = [t for t in run.ticks[1] if no_work in t.decision.message and t.now_s > 30.0]
    assert talker and all(t.decision.target_sm_clock_mhz is not None for t in talker)
    thinker = [t for t in run.ticks[0] if no_work in t.decision.message and t.now_s > 30.0]
    assert thinker and all(t.decision.target_sm_clock_mhz is None for t in thinker)
