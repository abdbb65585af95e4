"""Run one strategy on one scenario: a `Simulation`, one `ControlLoop` per GPU, a report.

Called by `triserve.bench.cli` (and the bench tests). The loops see exactly what the node
agent would: their GPU through `sim.backend` at their own tick, and `StageObservation`s built
from `sim.serving_snapshot` refreshed every scrape interval and from `sim.placements`. Only
the labelled oracle rows (`triserve.bench.lookahead`, `triserve.bench.optimum`) read
simulator internals.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from triserve.bench.plots import Timeline
from triserve.bench.results import StrategyResult
from triserve.control import ControlLoop, ControlSettings, Strategy
from triserve.sim import Scenario, Simulation
from triserve.telemetry import ServingSnapshot, StageObservation

#: Seconds between serving-metric scrapes, like a Prometheus scrape of each pod's /metrics.
SCRAPE_INTERVAL_S = 0.25

#: Builds the strategy of one GPU: (simulation, gpu index, settings) -> strategy.
StrategyFactory = Callable[[Simulation, int, ControlSettings], Strategy | None]


@dataclass(frozen=True, slots=True)
class StrategySpec:
    """One bench row: a name, loop settings and how to build each GPU's strategy."""

    name: str
    settings: ControlSettings
    setting: str = ""
    factory: StrategyFactory | None = None


@dataclass(slots=True)
class RunOutput:
    """A run's table row, plus timelines when a trace window was asked for."""

    result: StrategyResult
    timelines: dict[int, Timeline] = field(default_factory=dict)


def stage_observations(
    sim: Simulation, snaps: dict[str, ServingSnapshot] | None = None
) -> dict[int, list[StageObservation]]:
    """Per GPU, what the node agent would build from one scrape of every simulated stage.

    `snaps` is that scrape (default: a fresh one at the simulation's current time).
    """
    if snaps is None:
        snaps = {pl.stage: sim.serving_snapshot(pl.stage) for pl in sim.placements}
    by_gpu: dict[int, list[StageObservation]] = {}
    for pl in sim.placements:
        ups = tuple(pl.upstream)
        obs = StageObservation(
            stage=pl.stage,
            pipeline=sim.scenario.pipeline.name,
            pod=pl.pod,
            namespace=sim.scenario.pipeline.namespace,
            upstream=ups,
            serving=snaps.get(pl.stage),
            upstream_serving=tuple(snaps[u] for u in ups if u in snaps),
        )
        by_gpu.setdefault(pl.gpu_index, []).append(obs)
    return by_gpu


def run_strategy(
    scenario: Scenario,
    spec: StrategySpec,
    seed: int = 0,
    trace_window_s: tuple[float, float] | None = None,
) -> RunOutput:
    """Simulate `scenario` under `spec` and measure it (after the scenario's warm-up)."""
    started = time.perf_counter()
    sim = Simulation(scenario, seed=seed)
    settings = spec.settings
    gpus = sorted({pl.gpu_index for pl in sim.placements})
    loops: dict[int, ControlLoop] = {}
    for g in gpus:
        strategy = spec.factory(sim, g, settings) if spec.factory is not None else None
        loops[g] = ControlLoop(sim.backend, g, strategy, settings)
    stages_by_gpu = {
        g: ",".join(pl.stage for pl in sim.placements if pl.gpu_index == g) for g in gpus
    }
    timelines = {g: Timeline(g, stages_by_gpu[g]) for g in gpus} if trace_window_s else {}
    state: dict[str, object] = {"scrape_s": -1e9, "obs": {}}

    def on_tick(now_s: float) -> None:
        last = state["scrape_s"]
        assert isinstance(last, float)
        if now_s - last >= SCRAPE_INTERVAL_S - 1e-9:
            snaps = {pl.stage: sim.serving_snapshot(pl.stage) for pl in sim.placements}
            state["obs"] = stage_observations(sim, snaps)
            state["scrape_s"] = now_s
        obs = state["obs"]
        assert isinstance(obs, dict)
        for g, loop in loops.items():
            loop.tick(now_s, obs.get(g, ()))
        if trace_window_s and trace_window_s[0] <= now_s <= trace_window_s[1]:
            for g, loop in loops.items():
                s = loop.last_sample
                if s is not None:
                    timelines[g].add(
                        now_s - trace_window_s[0],
                        s.sm_clock_mhz,
                        s.power_mw / 1000.0,
                        s.temperature_c,
                        _phase_label(sim, g, loop),
                    )

    sim.run_until(scenario.duration_s, on_tick=on_tick, tick_s=settings.control_interval_s)
    for loop in loops.values():
        loop.release()
    report = sim.report()
    decisions: dict[str, int] = {}
    trips = 0
    for loop in loops.values():
        for k, v in loop.stats.decisions.items():
            decisions[k] = decisions.get(k, 0) + v
        trips += loop.stats.slo_guard_trips
    result = StrategyResult(
        strategy=spec.name,
        setting=spec.setting,
        energy_j=report.energy_j,
        requests=report.completed_requests,
        tokens=report.generated_tokens,
        duration_s=report.window_s,
        p50_ttft_s=report.ttft_p50_s or 0.0,
        p99_ttft_s=report.ttft_p99_s or 0.0,
        p50_e2e_s=report.e2e_p50_s or 0.0,
        p99_e2e_s=report.e2e_p99_s or 0.0,
        throughput_rps=report.throughput_rps,
        stall_high_s=report.stall_high_clock_s,
        throttle_s=report.throttle_s,
        decisions=decisions,
        slo_guard_trips=trips,
        wall_s=time.perf_counter() - started,
    )
    return RunOutput(result, timelines)


def _phase_label(sim: Simulation, gpu: int, loop: ControlLoop) -> str:
    """What the GPU runs, for shading plots: the bench may look inside the simulator."""
    phase = sim.gpus[gpu].phase
    if phase is not None:
        return phase.kind
    decision = loop.last_decision
    return "stall" if decision is not None and decision.reason.value == "stall" else "idle"
