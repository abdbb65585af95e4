"""Fixtures for the control tests: short simulations driven through the production agent."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from triserve.control import ControlLoop, ControlSettings, Decision, Strategy
from triserve.gpu.backend import GpuBackend, GpuSample
from triserve.node_agent.agent import NodeAgent
from triserve.sim import Phase, Scenario, Simulation, load_scenario, with_overrides
from triserve.simnode import AgentRun, run_agent


def short(name: str, duration_s: float, **update: object) -> Scenario:
    """A bundled scenario cut to `duration_s` with no warm-up."""
    return load_scenario(name).model_copy(
        update={"duration_s": duration_s, "warmup_s": 0.0, **update}
    )


def ideal(scenario: Scenario) -> Scenario:
    """`scenario` in the roofline-exact world the ridge estimator was designed for.

    ``counters: ideal`` (SM activity = compute share, DRAM activity up to 1, exact per-read
    averages) and no clock-sensitive decode share. Only for tests of control logic given
    exact counters, never for claims about savings (docs/calibration.md).
    """
    update: dict[str, object] = {"telemetry.counters": "ideal"}
    for i, st in enumerate(scenario.pipeline.stages):
        if st.decode is not None:
            update[f"pipeline.stages.{i}.decode.clock_sensitive_share"] = 0.0
    return with_overrides(scenario, update)


@dataclass
class Tick:
    """One recorded tick of one loop."""

    now_s: float
    decision: Decision
    sample: GpuSample
    lock: tuple[int, int] | None
    phase: str
    phase_obj: Phase | None


@dataclass
class Run:
    """A simulation driven by one loop per GPU, with every tick recorded."""

    sim: Simulation
    agent: NodeAgent
    loops: dict[int, ControlLoop]
    ticks: dict[int, list[Tick]] = field(default_factory=dict)


def drive(
    scenario: Scenario,
    settings: ControlSettings,
    until_s: float | None = None,
    strategy: Callable[[int], Strategy | None] | None = None,
    actuate: bool | None = None,
    after_tick: Callable[[AgentRun, float], None] | None = None,
) -> Run:
    """Run `scenario` through the production agent, with a ControlLoop per GPU from
    `settings` (and `strategy(gpu)` when given), recording every tick of every GPU;
    `after_tick(run, now_s)` sees the agent while it still governs (it releases at the end)."""
    loops: dict[int, ControlLoop] = {}
    ticks: dict[int, list[Tick]] = {}

    def make(
        sim: Simulation, backend: GpuBackend, index: int, _asked: ControlSettings
    ) -> ControlLoop:
        loop = ControlLoop(backend, index, strategy(index) if strategy else None, settings, actuate)
        loops[index] = loop
        return loop

    def record(run: AgentRun, now_s: float) -> None:
        if after_tick is not None:
            after_tick(run, now_s)
        for g, gpu in run.agent.gpus.items():
            result = gpu.loop.last_result if gpu.loop is not None else None
            if result is None or result.now_s != now_s:
                continue
            phase = run.sim.gpus[g].phase
            ticks.setdefault(g, []).append(
                Tick(
                    now_s,
                    result.decision,
                    result.sample,
                    run.sim.backend.locked_sm_clocks_mhz(g),
                    phase.kind if phase is not None else "idle",
                    phase,
                )
            )

    run = run_agent(
        scenario,
        loop_factory=make,
        until_s=until_s,
        tick_s=settings.control_interval_s,
        after_tick=record,
    )
    return Run(run.sim, run.agent, loops, ticks)


@pytest.fixture
def reference_30s() -> Scenario:
    """The reference scenario, 30 s, no warm-up."""
    return short("reference", 30.0)


@pytest.fixture
def reference_30s_ideal() -> Scenario:
    """The reference scenario, 30 s, no warm-up, with ideal counters (see `ideal`)."""
    return ideal(short("reference", 30.0))
