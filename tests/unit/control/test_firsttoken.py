"""The first-token floor keeps a GPU that takes new requests from locking decode too deep."""

from __future__ import annotations

from dataclasses import replace

from triserve.control import ControlSettings, StrategyKind
from triserve.control.firsttoken import FirstTokenFloor
from triserve.gpu.backend import Activity, GpuSample
from triserve.sim import Simulation, load_scenario
from triserve.telemetry import Histogram, ServingSnapshot, StageObservation

from .conftest import drive, short

#: TTFT buckets (s) and a histogram whose p99 is about 2 s.
BOUNDS_S = (0.5, 1.0, 2.0, 4.0, float("inf"))


def _entry(now_s: float, upstream: tuple[str, ...] = ()) -> StageObservation:
    ttft = Histogram(BOUNDS_S, (40.0, 80.0, 100.0, 100.0, 100.0), 90.0, 100.0)
    snap = ServingSnapshot(now_s, 4, 0, 0.0, 100.0, 0.0, ttft=ttft)
    return StageObservation("thinker", upstream=upstream, serving=snap)


def _sample(per_tick_counters: bool) -> GpuSample:
    sample = Simulation(load_scenario("reference")).backend.sample(0)
    # GPM on Hopper reads every tick; an A100's only activity is dcgm-exporter's 30 s mean.
    activity = Activity(0.1, 0.7, 0.9, period_s=None if per_tick_counters else 30.0)
    return replace(sample, activity=activity)


def _floor(sample: GpuSample, upstream: tuple[str, ...] = ()) -> float:
    floor = FirstTokenFloor(bound_pct=1.0)
    for i in range(20):  # the scrape period is learned from the scrapes' timestamps
        fraction = floor.update(sample, [_entry(0.5 * i, upstream)], tick_s=0.05)
    return fraction


def test_without_per_tick_counters_a_scrape_interval_keeps_the_entry_gpu_near_boost() -> None:
    # 0.55 s until a prefill is seen and raised: 1/(1 + 0.01 * 2 s / 0.55 s) of boost.
    assert abs(_floor(_sample(per_tick_counters=False)) - 1 / (1 + 0.01 * 2.0 / 0.55)) < 0.01


def test_per_tick_counters_allow_a_deeper_lock_and_non_entry_gpus_have_no_floor() -> None:
    hopper = _floor(_sample(per_tick_counters=True))
    assert hopper < _floor(_sample(per_tick_counters=False))
    assert abs(hopper - 1 / (1 + 0.01 * 2.0 / 0.1)) < 0.01
    assert _floor(_sample(per_tick_counters=True), upstream=("encoder",)) == 0.0


def test_on_an_a100_the_entry_gpu_keeps_p99_ttft_within_the_bound() -> None:
    scenario = short("a100", 400.0, warmup_s=60.0)
    default = drive(scenario, ControlSettings(strategy=StrategyKind.DEFAULT)).sim.report()
    floored = drive(scenario, ControlSettings()).sim.report()
    unfloored = drive(scenario, replace(ControlSettings(), first_token_floor=False)).sim.report()
    assert default.ttft_p99_s is not None and floored.ttft_p99_s is not None
    assert unfloored.ttft_p99_s is not None
    assert floored.ttft_p99_s <= 1.01 * default.ttft_p99_s
    assert unfloored.ttft_p99_s > 1.01 * default.ttft_p99_s, "the scenario exercises the floor"


def test_an_idle_entry_gpu_holds_its_first_token_floor_and_keeps_ttft_in_bound() -> None:
    """The driver keeps an idle GPU with a CUDA context at boost (and its power): the entry
    GPU instead holds the floor a new request's prefill can afford, not the stall clock."""
    scenario = short("reference", 300.0, warmup_s=60.0)
    default = drive(scenario, ControlSettings(strategy=StrategyKind.DEFAULT))
    run = drive(scenario, ControlSettings())
    boost = run.loops[0].limits.default_max_mhz
    held = [
        t.decision.target_sm_clock_mhz
        for t in run.ticks[0]
        if t.now_s > 120.0 and "first-token floor" in t.decision.message
    ]
    assert held, "the entry GPU idles with no upstream: it must hold the floor"
    assert all(c is not None and 0.6 * boost < c < boost for c in held), set(held)
    idle = [t for t in run.ticks[0] if t.now_s > 120.0 and t.phase == "idle"]
    e_idle = sum(t.sample.power_mw for t in idle) / len(idle)
    d_idle = [t for t in default.ticks[0] if t.now_s > 120.0 and t.phase == "idle"]
    assert e_idle < 0.97 * sum(t.sample.power_mw for t in d_idle) / len(d_idle)
    ttft, base = run.sim.report().ttft_p99_s, default.sim.report().ttft_p99_s
    assert ttft is not None and base is not None and ttft <= 1.01 * base
