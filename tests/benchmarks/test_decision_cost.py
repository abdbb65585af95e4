"""Per-tick decision cost of the Tri-serve controller (target: < 50 µs per GPU per tick).

What is timed is the controller's own work for one tick — signals, strategy, clamp and the
stats — on real samples recorded from the simulated backend; the backend read itself is
excluded (an NVML batch read is the agent's cost, not the controller's). With benchmarks
disabled (the default addopts) the test still runs the measurement once and prints the
µs/tick figure against its target; timing is reported, never asserted (a loaded CI machine
must not fail the suite). Print it with `make perf`, or alone with:

    .venv/bin/pytest tests/benchmarks/test_decision_cost.py -s -q
"""

from __future__ import annotations

import time
from typing import Any

from triserve.control import ControlLoop, ControlSettings
from triserve.control.decisions import Reason
from triserve.gpu.backend import GpuSample
from triserve.sim import Simulation, load_scenario
from triserve.simnode import AgentRun, run_agent
from triserve.telemetry import StageObservation

TICKS = 2000


class _Replay:
    """Replays recorded samples of a real simulated GPU, so timing excludes the simulator."""

    def __init__(self, sim: Simulation, samples: list[GpuSample]) -> None:
        self._sim = sim
        self._samples = samples
        self.i = 0

    def sample(self, index: int) -> GpuSample:
        s = self._samples[self.i % len(self._samples)]
        self.i += 1
        return s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sim.backend, name)


def _recorded() -> tuple[Simulation, list[GpuSample], list[list[StageObservation]]]:
    scenario = load_scenario("reference").model_copy(update={"duration_s": 40.0, "warmup_s": 0})
    samples: list[GpuSample] = []
    stages: list[list[StageObservation]] = []

    def record(run: AgentRun, now_s: float) -> None:
        gpu = run.agent.gpus[1]
        if gpu.last_sample is not None:
            samples.append(gpu.last_sample)
            stages.append(list(gpu.stages))

    run = run_agent(scenario, after_tick=record)
    return run.sim, samples, stages


def measure_us_per_tick(ticks: int = TICKS) -> float:
    """Mean controller cost of one tick of one GPU, in µs (Observe mode: no setter calls)."""
    sim, samples, stages = _recorded()
    replay = _Replay(sim, samples)
    loop = ControlLoop(replay, 1, None, ControlSettings(), actuate=False)
    n = len(stages)
    started = time.perf_counter()
    for i in range(ticks):
        loop.tick(0.05 * i, stages[i % n])
    return (time.perf_counter() - started) / ticks * 1e6


def test_decision_cost_per_gpu_tick(benchmark: Any) -> None:
    us = benchmark.pedantic(measure_us_per_tick, rounds=1, iterations=1)
    benchmark.extra_info["us_per_tick"] = us
    verdict = "met" if us < 50.0 else "MISSED"
    print(f"\nTri-serve decision cost: {us:.1f} µs per GPU per tick (target < 50 µs: {verdict})")
    assert _reasons_seen() - {Reason.DEFAULT}, "the timed ticks never left the default path"


def _reasons_seen() -> set[Reason]:
    """Reasons the timed workload produces, so the figure covers the Tri-serve paths."""
    sim, samples, stages = _recorded()
    loop = ControlLoop(_Replay(sim, samples), 1, None, ControlSettings(), actuate=False)
    return {
        loop.tick(0.05 * i, stages[i % len(stages)]).decision.reason for i in range(len(stages))
    }
