"""Drive a whole scenario through the production node agent on simulated time.

`run_agent` is what `triserve bench`, the control tests and the calibration of the agent's
estimates run: a real `NodeAgent` (pod discovery, GPU mapping, the safety wrapper, one
`ControlLoop` per GPU, baseline probes) on a `SimNode`, whose serving and dcgm-exporter
metrics reach the agent as Prometheus text through the agent's own parsers at the agent's
default scrape interval. Nothing waits on the wall clock: the agent's tick runs inside the
simulation every control interval, as fast as the simulator goes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from triserve.api.models import EnergyPolicySpec
from triserve.control import ControlLoop, ControlSettings, ProbeSettings
from triserve.gpu.backend import GpuBackend
from triserve.node_agent.agent import NodeAgent, PolicyRef
from triserve.node_agent.safety import StateFile
from triserve.sim import Scenario, Simulation
from triserve.simnode.node import SimNode

__all__ = ["AgentRun", "LoopFactory", "run_agent"]

#: The agent's default serving and dcgm-exporter scrape interval, in seconds.
SCRAPE_INTERVAL_S = 0.5

#: Builds one GPU's loop on a simulated node: (simulation, backend, GPU index, the settings the
#: agent asks for: its `actuate` is the agent's Observe/Enforce choice) -> loop.
#: `backend` is the agent's safety-wrapped backend; use it, never `sim.backend`.
LoopFactory = Callable[[Simulation, GpuBackend, int, ControlSettings], ControlLoop]


@dataclass(slots=True)
class AgentRun:
    """A finished (or running) scenario under the agent: the simulation, agent and node."""

    sim: Simulation
    agent: NodeAgent
    node: SimNode
    ticks: int = 0


def default_policy() -> PolicyRef:
    """The policy a bench row runs under: TriServe, Enforce, every pod with a stage."""
    return PolicyRef("bench", EnergyPolicySpec.model_validate({}), 1)


def run_agent(
    scenario: Scenario,
    *,
    seed: int = 0,
    loop_factory: LoopFactory | None = None,
    policy: PolicyRef | None = None,
    probe: ProbeSettings | None = None,
    until_s: float | None = None,
    tick_s: float | None = None,
    scrape_interval_s: float = SCRAPE_INTERVAL_S,
    after_tick: Callable[[AgentRun, float], None] | None = None,
    state_dir: Path | None = None,
    hints: bool = False,
) -> AgentRun:
    """Run `scenario` under a real `NodeAgent` until `until_s` (default: its duration).

    `loop_factory` None runs what `policy` says (default: `default_policy`); otherwise it
    builds each GPU's loop (the bench's rows). Every GPU is released at the end, as on
    SIGTERM. `after_tick(run, now_s)` is called after every agent tick (traces). `hints`
    True: the simulated engines send stage hints (`SimNode`).
    """
    sim = Simulation(scenario, seed=seed)
    policy = policy or default_policy()
    interval_s = tick_s or policy.spec.control_interval_ms / 1000.0
    with tempfile.TemporaryDirectory(prefix="triserve-sim-") as tmp:
        state = StateFile((state_dir or Path(tmp)) / "state.json")
        factory = None
        if loop_factory is not None:
            make = loop_factory

            def factory(backend: GpuBackend, index: int, settings: ControlSettings) -> ControlLoop:
                return make(sim, backend, index, settings)

        agent = NodeAgent(
            sim.backend,
            scenario.hostname,
            state,
            probe=probe,
            loop_factory=factory,
            # As the operator would pass it: the exporter's configured collection interval.
            dcgm_period_s=scenario.telemetry.dcgm_interval_s,
        )
        agent.startup()
        node = SimNode(sim, agent, scrape_interval_s=scrape_interval_s, hints=hints)
        run = AgentRun(sim, agent, node)
        agent.set_policy(policy)
        node.publish_pods(policy.spec.pod_selector)

        def on_tick(now_s: float) -> None:
            node.on_tick(now_s)
            run.ticks += 1
            if after_tick is not None:
                after_tick(run, now_s)

        sim.run_until(
            until_s if until_s is not None else scenario.duration_s,
            on_tick,
            interval_s,
            on_event=node.on_event if hints else None,
        )
        agent.shutdown("scenario finished")
    return run
