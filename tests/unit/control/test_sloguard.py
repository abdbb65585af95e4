"""The SLO guard learns a default-clock baseline and backs off when latency inflates."""

from __future__ import annotations

from dataclasses import replace

from tests.unit.decode_stage import BOUNDS_S, DecodeStage
from triserve.control import ControlLoop, ControlSettings, IntensitySource, Reason
from triserve.control.latency import window_stat
from triserve.control.sloguard import SloGuard
from triserve.sim import Scenario, Simulation
from triserve.telemetry import Histogram

from .conftest import drive, short


def test_window_stat_gives_mean_and_spread() -> None:
    hist = Histogram(BOUNDS_S, (0, 10, 20, 20, 20, 20, 20, 20, 20), 0.3, 20)
    stat = window_stat(hist)
    assert stat is not None
    assert abs(stat.mean_s - 0.015) < 1e-9
    assert stat.stderr_s > 0


def _feed(guard: SloGuard, stage: DecodeStage, start_s: float, end_s: float, latency_s: float,
          at_default: bool) -> float | None:  # fmt: skip
    """Feed scrapes every 0.25 s; return when the guard tripped (None: it did not)."""
    now, tripped = start_s, None
    while now < end_s:
        if guard.update(now, [stage.observe(now, latency_s)], at_default) and tripped is None:
            tripped = now
        now += 0.25
    return tripped


def test_the_guard_compares_p99_with_default_windows_and_trips_on_inflation() -> None:
    guard = SloGuard(max_increase_pct=1.0, window_s=2.0, hold_s=3.0, min_count=50)
    stage = DecodeStage()
    assert _feed(guard, stage, 0.0, 3.0, 0.02, at_default=True) is None
    # Controlled at the same latency: no trip.
    assert _feed(guard, stage, 3.0, 8.0, 0.02, at_default=False) is None
    tripped = _feed(guard, stage, 8.0, 14.0, 0.045, at_default=False)
    assert tripped is not None and tripped < 10.0, "trips within a bounded time"
    assert guard.trips >= 1
    assert "inter_token" in guard.message and "p99" in guard.message
    assert guard.until_s is not None and not guard.active(guard.until_s + 0.01)


def test_the_guard_needs_no_long_stretch_at_default() -> None:
    """Short default windows (probes) interleaved with control are enough of a reference."""
    guard = SloGuard(max_increase_pct=1.0, window_s=4.0, hold_s=3.0, min_count=50)
    stage = DecodeStage()
    now, tripped = 0.0, None
    while now < 30.0 and tripped is None:
        probe = int(now * 4) % 20 == 0  # one 0.25 s scrape at default every 5 s
        latency = 0.02 if probe else 0.035
        if guard.update(now, [stage.observe(now, latency)], at_default=probe):
            tripped = now
        now += 0.25
    assert tripped is not None


def test_a_tripped_guard_hands_clocks_back_within_a_few_ticks(reference_30s: Scenario) -> None:
    sim = Simulation(reference_30s)
    loop = ControlLoop(sim.backend, 1, None, ControlSettings())
    strategy = loop.strategy
    guard = getattr(strategy, "guard", None)
    assert isinstance(guard, SloGuard)
    guard.until_s = 1e9  # as if the latency bound had just been broken
    guard.message = "talker inter_token latency +5.0% over its default-clock baseline"
    decisions = []
    for i in range(3):
        sim.run_until(0.05 * (i + 1))
        decisions.append(loop.tick(sim.now_s, []).decision)
    assert decisions[-1].reason is Reason.SLO_GUARD
    assert decisions[-1].target_sm_clock_mhz is None
    assert sim.backend.locked_sm_clocks_mhz(1) is None
    assert "latency" in decisions[-1].message


def test_a_clock_sensitive_decode_trips_the_guard_on_an_always_busy_gpu() -> None:
    """Decode whose step time has a large clock-sensitive share, a GPU that never idles, and
    a source that underestimates the ridge (pipe counters): the guard must catch it."""
    scenario = short("reference", 120.0)
    stages = [
        st.model_copy(
            update={"decode": st.decode.model_copy(update={"clock_sensitive_share": 0.3})}
        )
        if st.decode is not None
        else st
        for st in scenario.pipeline.stages
    ]
    workload = scenario.workload.model_copy(update={"rate_rps": 0.6})
    scenario = scenario.model_copy(
        update={
            "pipeline": scenario.pipeline.model_copy(update={"stages": stages}),
            "workload": workload,
        }
    )
    settings = replace(
        ControlSettings().only("A"),
        intensity_source=IntensitySource.COUNTERS,
        ridge_floor_fraction=0.0,
    )
    run = drive(scenario, settings)
    busy = [t for t in run.ticks[0] if t.phase != "idle"]
    assert len(busy) > 0.9 * len(run.ticks[0]), "the thinker GPU should never idle"
    assert run.loops[0].stats.slo_guard_trips >= 1
    assert any(t.decision.reason is Reason.SLO_GUARD for t in run.ticks[0])
