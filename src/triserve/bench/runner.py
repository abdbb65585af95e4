"""Run one strategy on one scenario through the production node agent, and measure it.

Called by `triserve.bench.cli` (and the bench tests). Each run is `triserve.simnode.run_agent`:
a real `NodeAgent` on a simulated node — pods discovered from manifests, serving and
dcgm-exporter metrics parsed from Prometheus text at the agent's 0.5 s scrape interval,
the safety wrapper, baseline probes — with each GPU's `ControlLoop` built from the row's
`StrategySpec`. Only labelled offline rows (the optimum, the lookahead) read simulator
internals, through their factories.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from triserve.bench.plots import Timeline
from triserve.bench.results import StrategyResult
from triserve.control import ControlLoop, ControlSettings, Strategy
from triserve.control.slotargets import SloTargetSetting
from triserve.gpu.backend import GpuBackend
from triserve.sim import Scenario, Simulation, with_overrides
from triserve.simnode import AgentRun, run_agent

#: Builds the strategy of one GPU: (simulation, gpu index, settings) -> strategy.
StrategyFactory = Callable[[Simulation, int, ControlSettings], Strategy | None]


@dataclass(frozen=True, slots=True)
class StrategySpec:
    """One bench row: a name, loop settings and how to build each GPU's strategy.

    `hints` True: the simulated serving engines send stage hints (`triserve.hints`).
    `node` changes what the node runs beside the agent, as scenario overrides by dotted path
    (`triserve.sim.with_overrides`): ``{"pmu.perf_boost": False}`` is every engine started
    with ``CUDA_DISABLE_PERF_BOOST=1``; ``{"pmu.pstated": {}}`` a P-state daemon.
    """

    name: str
    settings: ControlSettings
    setting: str = ""
    factory: StrategyFactory | None = None
    hints: bool = False
    node: tuple[tuple[str, object], ...] = ()


@dataclass(slots=True)
class RunOutput:
    """A run's table row, plus timelines when a trace window was asked for.

    `ttft_s` and `e2e_s` are the measured requests' own latencies (pipeline-level, from
    the simulator's report): the SLO rows count the requests over a target with them.
    """

    result: StrategyResult
    timelines: dict[int, Timeline] = field(default_factory=dict)
    ttft_s: tuple[float, ...] = ()
    e2e_s: tuple[float, ...] = ()


def over_targets(
    ttft_s: Sequence[float], e2e_s: Sequence[float], targets: Sequence[SloTargetSetting]
) -> float | None:
    """Percent of requests over their target, for the pipeline target most missed.

    Only pipeline-wide TTFT and e2e targets are counted (what the bench measures per
    request); at most ``100 · (1 - quantile)`` means every such target held. None when
    `targets` has none of them or no request finished.
    """
    shares = [
        100.0 * sum(1 for x in values if x > t.target_s) / len(values)
        for t in targets
        if t.stage is None and t.metric in ("ttft", "e2e")
        for values in [ttft_s if t.metric == "ttft" else e2e_s]
        if values
    ]
    return max(shares) if shares else None


def run_strategy(
    scenario: Scenario,
    spec: StrategySpec,
    seed: int = 0,
    trace_window_s: tuple[float, float] | None = None,
) -> RunOutput:
    """Simulate `scenario` under `spec` through the node agent; measure after the warm-up."""
    started = time.perf_counter()
    settings = spec.settings
    if spec.node:
        scenario = with_overrides(scenario, dict(spec.node))

    def make_loop(
        sim: Simulation, backend: GpuBackend, index: int, asked: ControlSettings
    ) -> ControlLoop:
        # The row's own settings, except whether to actuate: the agent decides that (Observe).
        strategy = spec.factory(sim, index, settings) if spec.factory is not None else None
        return ControlLoop(backend, index, strategy, settings, actuate=asked.actuate)

    timelines: dict[int, Timeline] = {}

    def trace(run: AgentRun, now_s: float) -> None:
        if not trace_window_s or not trace_window_s[0] <= now_s <= trace_window_s[1]:
            return
        for g, gpu in run.agent.gpus.items():
            s = gpu.last_sample
            if s is None:
                continue
            if g not in timelines:
                stages = ",".join(p.stage for p in run.sim.placements if p.gpu_index == g)
                timelines[g] = Timeline(g, stages)
            phase = run.sim.gpus[g].phase
            timelines[g].add(
                now_s - trace_window_s[0],
                s.sm_clock_mhz,
                s.power_mw / 1000.0,
                s.temperature_c,
                phase.kind if phase is not None else ("stall" if run.sim.stalled(g) else "idle"),
            )

    run = run_agent(
        scenario,
        seed=seed,
        loop_factory=make_loop,
        tick_s=settings.control_interval_s,
        after_tick=trace if trace_window_s else None,
        hints=spec.hints,
    )
    report = run.sim.report()
    decisions: dict[str, int] = {}
    trips = 0
    for gpu in run.agent.gpus.values():
        for k, v in gpu.totals.decisions.items():
            decisions[k] = decisions.get(k, 0) + v
        trips += gpu.totals.slo_guard_trips
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
        over_target_pct=over_targets(report.ttft_s, report.e2e_s, settings.slo_targets),
        wall_s=time.perf_counter() - started,
    )
    return RunOutput(result, timelines, report.ttft_s, report.e2e_s)
