"""Soak benchmark: the agent on an 8-GPU simulated node for a simulated day, memory and ticks.

The production `NodeAgent` governs 8 simulated H100s running the reference pipeline, on
virtual time (the simulator's clock, not the wall clock), at a 1 s control interval. Around
it, what a day in a cluster does to it: serving and dcgm-exporter scrapes every 0.5 s (the
simulated node), a NodeEnergyReport built every 30 s (2,880 a day), and a Prometheus scrape of
its exporter every 15 s. Every simulated hour it records the process's resident memory, the
memory Python holds (tracemalloc), the ticks that ran in that hour and the CPU time per tick.
Flat memory and 3,600 ticks an hour are what a node needs to run for weeks. The agent's
bounded windows fill in the first 40 minutes (the latency guard's reference keeps 30 minutes of
default-clock observations, its TTFT window 10): memory grows until then, by design.

    .venv/bin/python -m tests.benchmarks.soak --hours 24     # the table in docs/restore.md

`tests/benchmarks/test_soak.py` runs a short soak in the test suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml
from prometheus_client.exposition import generate_latest

from triserve.api.models import EnergyPolicySpec
from triserve.node_agent.agent import NodeAgent, PolicyRef
from triserve.node_agent.exporter import build_registry
from triserve.node_agent.reports import Reporter
from triserve.node_agent.safety import StateFile
from triserve.node_agent.stages import pod_from_manifest
from triserve.sim import Simulation, load_scenario
from triserve.simnode.node import SimNode

GPUS = 8
TICK_S = 1.0
REPORT_S = 30.0
PROMETHEUS_S = 15.0
REFERENCE = Path(__file__).resolve().parents[2] / "examples" / "scenarios" / "reference.yaml"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The agent after `hour` simulated hours."""

    hour: float
    rss_mb: float
    traced_mb: float
    ticks_in_hour: int
    cpu_ms_per_tick: float


def gpu_node(
    tmp: Path, gpus: int, control_interval_ms: int
) -> tuple[Simulation, NodeAgent, SimNode]:
    """The reference pipeline on a `gpus`-GPU node, a stage pod on every GPU (by annotation)."""
    scenario = yaml.safe_load(REFERENCE.read_text())
    scenario["gpus"] = [{"profile": "h100-sxm"}] * gpus
    path = tmp / "eight.yaml"
    path.write_text(yaml.safe_dump(scenario))
    sim = Simulation(load_scenario(str(path)), seed=0)
    agent = NodeAgent(sim.backend, "soak-node", StateFile(tmp / "state.json"))
    node = SimNode(sim, agent, scrape_interval_s=0.5)
    manifests: list[dict[str, Any]] = []
    for gpu in range(gpus):
        m = node.manifests()[gpu % len(sim.placements)]
        m["metadata"]["name"] = f"{m['metadata']['name']}-g{gpu}"
        m["metadata"]["annotations"]["triserve.io/gpus"] = str(gpu)
        manifests.append(m)
    node.pods = [p for p in (pod_from_manifest(m) for m in manifests) if p is not None]
    agent.set_pods(node.pods)
    spec = {
        "controlIntervalMs": control_interval_ms,
        "gpuAnnotations": {"trustedNamespaces": ["omni"]},  # 8 pods named by annotation
    }
    agent.set_policy(PolicyRef("soak", EnergyPolicySpec.model_validate(spec), 1))
    return sim, agent, node


def soak(
    hours: float, checkpoints_per_hour: int = 1, trace: bool = False, gpus: int = GPUS
) -> list[Checkpoint]:
    """Run the agent for `hours` simulated hours; a checkpoint every 1/`checkpoints_per_hour`.

    `trace` also measures the Python heap (tracemalloc: about twice as slow); else it reads 0.
    """
    if trace:
        tracemalloc.start()
    process = psutil.Process()
    out: list[Checkpoint] = []
    with tempfile.TemporaryDirectory() as tmp:
        sim, agent, node = gpu_node(Path(tmp), gpus, int(TICK_S * 1000))
        registry = build_registry(agent)
        reporter = Reporter(agent)
        step_s = 3600.0 / checkpoints_per_hour
        next_report_s = REPORT_S
        next_scrape_s = PROMETHEUS_S

        def on_tick(now_s: float) -> None:
            nonlocal next_report_s, next_scrape_s
            node.on_tick(now_s)
            if now_s >= next_report_s:
                next_report_s += REPORT_S
                reporter.build(dt.datetime.now(dt.UTC))
            if now_s >= next_scrape_s:
                next_scrape_s += PROMETHEUS_S
                generate_latest(registry)

        steps = round(hours * checkpoints_per_hour)
        for step in range(1, steps + 1):
            ticks_before = agent.ticks.ticks_run
            cpu_before = time.process_time()
            sim.run_until(step * step_s, on_tick=on_tick, tick_s=TICK_S)
            ticks = agent.ticks.ticks_run - ticks_before
            cpu_s = time.process_time() - cpu_before
            gc.collect()
            traced = tracemalloc.get_traced_memory()[0] if trace else 0
            out.append(
                Checkpoint(
                    hour=step / checkpoints_per_hour,
                    rss_mb=process.memory_info().rss / 2**20,
                    traced_mb=traced / 2**20,
                    ticks_in_hour=round(ticks * checkpoints_per_hour),
                    cpu_ms_per_tick=1000.0 * cpu_s / max(ticks, 1),
                )
            )
        agent.shutdown("soak done")
    if trace:
        tracemalloc.stop()
    return out


def table(points: list[Checkpoint]) -> str:
    """The checkpoints as a Markdown table."""
    rows = [
        "| simulated hour | RSS (MB) | Python heap (MB) | ticks in the hour | CPU ms per tick* |",
        "|---|---|---|---|---|",
    ]
    rows += [
        f"| {p.hour:g} | {p.rss_mb:.1f} | {p.traced_mb:.2f} | {p.ticks_in_hour} | "
        f"{p.cpu_ms_per_tick:.2f} |"
        for p in points
    ]
    rows.append("\n\\* simulator, scrapes, reports and exporter included.")
    return "\n".join(rows)


def main() -> None:
    """`python -m tests.benchmarks.soak --hours H`: print the soak table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=24.0, help="simulated hours (24)")
    parser.add_argument("--trace", action="store_true", help="also measure the Python heap")
    args = parser.parse_args()
    print(table(soak(args.hours, trace=args.trace)), flush=True)


if __name__ == "__main__":
    main()
