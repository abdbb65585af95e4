"""The SLO guard learns a default-clock baseline and backs off when latency inflates."""

from __future__ import annotations

from triserve.control import ControlLoop, ControlSettings, Reason
from triserve.control.sloguard import SloGuard, window_stat
from triserve.sim import Scenario, Simulation
from triserve.telemetry import Histogram, ServingSnapshot, StageObservation

BOUNDS_S = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, float("inf"))


class _Stage:
    """A decode stage whose inter-token latency we dictate (the serving side, not the GPU)."""

    def __init__(self) -> None:
        self.counts = [0.0] * len(BOUNDS_S)
        self.sum_s = 0.0
        self.total = 0.0

    def observe(self, now_s: float, latency_s: float, n: int = 40) -> StageObservation:
        i = next(k for k, b in enumerate(BOUNDS_S) if latency_s <= b)
        for k in range(i, len(BOUNDS_S)):
            self.counts[k] += n
        self.sum_s += latency_s * n
        self.total += n
        hist = Histogram(BOUNDS_S, tuple(self.counts), self.sum_s, self.total)
        snap = ServingSnapshot(now_s, 4, 0, 0.0, self.total, 0.0, inter_token=hist)
        return StageObservation("talker", serving=snap)


def test_window_stat_gives_mean_and_spread() -> None:
    hist = Histogram(BOUNDS_S, (0, 10, 20, 20, 20, 20, 20, 20, 20), 0.3, 20)
    stat = window_stat(hist)
    assert stat is not None
    assert abs(stat.mean_s - 0.015) < 1e-9
    assert stat.stderr_s > 0


def test_the_guard_trips_on_inflation_and_releases_after_its_hold() -> None:
    guard = SloGuard(max_increase_pct=1.0, window_s=2.0, hold_s=3.0)
    stage = _Stage()
    now = 0.0
    while now < 6.0:  # at default clocks: learn the baseline
        guard.update(now, [stage.observe(now, 0.02)])
        now += 0.25
    assert ("talker", "inter_token") in guard.baseline
    tripped_at = None
    while now < 12.0:
        guard.note_controlled(now)
        if guard.update(now, [stage.observe(now, 0.045)]) and tripped_at is None:
            tripped_at = now
        now += 0.25
    assert tripped_at is not None and tripped_at < 9.0
    assert guard.trips >= 1
    assert "inter_token" in guard.message
    assert not guard.active(guard.until_s + 0.01)


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
