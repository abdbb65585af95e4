"""Benchmark: one agent tick over 8 simulated GPUs at a 50 ms control interval.

Targets: under 5% of one CPU core and under 150 MB resident. The figures are measured
with the agent tick alone (the simulator's own cost is excluded) and printed against the
targets: reported, never asserted, because timings flake on a loaded machine.
Print them with::

    .venv/bin/pytest tests/benchmarks/test_agent_tick.py -s --benchmark-enable
    .venv/bin/python -m tests.benchmarks.test_agent_tick
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from triserve.node_agent.agent import NodeAgent
from triserve.sim import Simulation
from triserve.simnode.node import SimNode

from .soak import gpu_node

GPUS = 8
INTERVAL_S = 0.05
REFERENCE = Path(__file__).resolve().parents[2] / "examples" / "scenarios" / "reference.yaml"


def eight_gpu_node(tmp: Path) -> tuple[Simulation, NodeAgent, SimNode]:
    """The reference pipeline on an 8-GPU node, with a stage pod on every GPU."""
    sim, agent, node = gpu_node(tmp, GPUS, int(INTERVAL_S * 1000))
    sim.run_until(30.0, on_tick=node.on_tick, tick_s=INTERVAL_S)  # warm: loops built, locks on
    return sim, agent, node


def measure(ticks: int = 400) -> dict[str, float]:
    """CPU seconds per tick, the CPU share of one core at 50 ms, and the process RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        sim, agent, node = eight_gpu_node(Path(tmp))
        cpu_s = 0.0
        for _ in range(ticks):
            sim.run_until(sim.now_s + INTERVAL_S)
            node.scrape(sim.now_s)
            started = time.process_time()
            agent.tick(sim.now_s)
            cpu_s += time.process_time() - started
        assert sum(g.governed for g in agent.gpus.values()) == GPUS
    per_tick_s = cpu_s / ticks
    return {
        "tick_cpu_ms": 1000.0 * per_tick_s,
        "cpu_share_pct": 100.0 * per_tick_s / INTERVAL_S,
        "rss_mb": psutil.Process().memory_info().rss / 2**20,
    }


def test_tick_for_eight_gpus_fits_the_cpu_and_memory_budget(benchmark: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sim, agent, _node = eight_gpu_node(Path(tmp))

        def advance() -> None:
            sim.run_until(sim.now_s + INTERVAL_S)

        benchmark.pedantic(lambda: agent.tick(sim.now_s), setup=advance, rounds=200)
    figures = measure()
    benchmark.extra_info.update(figures)
    print(
        f"\nagent tick, {GPUS} GPUs @ {INTERVAL_S * 1000:.0f} ms: "
        f"{figures['tick_cpu_ms']:.3f} ms CPU/tick = {figures['cpu_share_pct']:.2f}% of a core; "
        f"RSS {figures['rss_mb']:.0f} MB"
    )
    cpu_ok = "met" if figures["cpu_share_pct"] < 5.0 else "MISSED"
    rss_ok = "met" if figures["rss_mb"] < 150.0 else "MISSED"
    print(f"targets: CPU < 5% of a core {cpu_ok}; RSS < 150 MB {rss_ok} (reported, not asserted)")


if __name__ == "__main__":
    print(measure())
