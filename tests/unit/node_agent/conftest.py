"""Fixtures for the node agent's unit tests: a simulated node and an agent over it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from triserve.api.models import EnergyPolicySpec
from triserve.node_agent.agent import NodeAgent, PolicyRef
from triserve.node_agent.safety import StateFile
from triserve.sim import Simulation
from triserve.simnode.node import SimNode, open_simulation


def policy(name: str = "p1", **spec: Any) -> PolicyRef:
    """A policy with a spec given in Kubernetes (camelCase) field names."""
    return PolicyRef(name, EnergyPolicySpec.model_validate(spec), 1)


@pytest.fixture
def sim() -> Simulation:
    """The reference scenario (2 GPUs: thinker on 0, talker and code2wav on 1)."""
    return open_simulation("reference", seed=0)


@pytest.fixture
def make_agent(tmp_path: Path, sim: Simulation) -> Callable[..., tuple[NodeAgent, SimNode]]:
    """An agent on the simulated node with its stage pods published."""

    def make(p: PolicyRef | None = None, **kw: Any) -> tuple[NodeAgent, SimNode]:
        agent = NodeAgent(sim.backend, "sim-node-0", StateFile(tmp_path / "state.json"), **kw)
        node = SimNode(sim, agent, scrape_interval_s=0.25)
        node.publish_pods()
        agent.set_policy(p if p is not None else policy())
        return agent, node

    return make


def run(sim: Simulation, node: SimNode, until_s: float, tick_s: float = 0.05) -> None:
    """Advance the simulation with the agent ticking inside it."""
    sim.run_until(until_s, on_tick=node.on_tick, tick_s=tick_s)
