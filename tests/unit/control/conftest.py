"""Fixtures for the control tests: short real simulations and a loop runner over them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from triserve.bench.runner import stage_observations
from triserve.control import ControlLoop, ControlSettings, Decision, Strategy
from triserve.gpu.backend import GpuSample
from triserve.sim import Phase, Scenario, Simulation, load_scenario
from triserve.telemetry import StageObservation

SCRAPE_S = 0.25


def short(name: str, duration_s: float, **update: object) -> Scenario:
    """A bundled scenario cut to `duration_s` with no warm-up."""
    return load_scenario(name).model_copy(
        update={"duration_s": duration_s, "warmup_s": 0.0, **update}
    )


def observations(sim: Simulation) -> dict[int, list[StageObservation]]:
    """What the node agent would build from one scrape of every stage."""
    return stage_observations(sim)


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
    loops: dict[int, ControlLoop]
    ticks: dict[int, list[Tick]] = field(default_factory=dict)


def drive(
    scenario: Scenario,
    settings: ControlSettings,
    until_s: float | None = None,
    strategy: Callable[[int], Strategy | None] | None = None,
    actuate: bool | None = None,
) -> Run:
    """Run `scenario` with a ControlLoop per GPU over the real SimBackend."""
    sim = Simulation(scenario, seed=0)
    gpus = sorted({pl.gpu_index for pl in sim.placements})
    loops = {
        g: ControlLoop(sim.backend, g, strategy(g) if strategy else None, settings, actuate)
        for g in gpus
    }
    run = Run(sim, loops, {g: [] for g in gpus})
    state: dict[str, object] = {"t": -1e9, "obs": {}}

    def on_tick(now_s: float) -> None:
        last = state["t"]
        assert isinstance(last, float)
        if now_s - last >= SCRAPE_S - 1e-9:
            state["obs"], state["t"] = observations(sim), now_s
        obs = state["obs"]
        assert isinstance(obs, dict)
        for g, loop in loops.items():
            d = loop.tick(now_s, obs.get(g, []))
            phase = sim.gpus[g].phase
            assert loop.last_sample is not None
            run.ticks[g].append(
                Tick(
                    now_s,
                    d,
                    loop.last_sample,
                    sim.backend.locked_sm_clocks_mhz(g),
                    phase.kind if phase is not None else "idle",
                    phase,
                )
            )

    sim.run_until(until_s or scenario.duration_s, on_tick=on_tick, tick_s=0.05)
    return run


@pytest.fixture
def reference_30s() -> Scenario:
    """The reference scenario, 30 s, no warm-up."""
    return short("reference", 30.0)
