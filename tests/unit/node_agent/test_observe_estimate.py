"""Observe mode's report says what Enforce would save on the node, and on what basis."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

from triserve.node_agent.agent import NodeAgent
from triserve.node_agent.governor import PolicyRef
from triserve.node_agent.reports import Reporter
from triserve.node_agent.safety import StateFile
from triserve.sim import Simulation, load_scenario, with_overrides
from triserve.simnode.node import SimNode

from .conftest import policy, run

Make = Callable[..., tuple[NodeAgent, SimNode]]
NOW = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)


def test_observe_reports_an_enforce_estimate_with_its_basis_below_what_enforce_measures(
    tmp_path: Path,
) -> None:
    observed = Simulation(load_scenario("reference"), seed=0)
    agent, node = _agent(observed, tmp_path / "observe", policy(mode="Observe"))
    run(observed, node, 300.0)
    eff = Reporter(agent).build(NOW).efficiency
    # Nothing was locked: what was measured is the default. The estimate prices the stalls
    # Enforce would park and nothing else, so it is a lower bound on what Enforce gets.
    enforced = Simulation(load_scenario("reference"), seed=0)
    _, enforcing = _agent(enforced, tmp_path / "enforce", policy())
    run(enforced, enforcing, 300.0)
    gain_pct = 100.0 * (observed.report().energy_j / enforced.report().energy_j - 1.0)
    assert eff.improvement_percent == 0.0
    assert 0.0 < eff.enforce_estimate_percent <= gain_pct
    assert "stalls (D) only" in eff.enforce_estimate_method
    assert "estimate, not a measurement" in eff.enforce_estimate_method


def test_observe_gives_no_estimate_for_a_gpu_model_without_published_idle_powers(
    tmp_path: Path,
) -> None:
    sim = Simulation(with_overrides(load_scenario("reference"), H200), seed=0)
    agent, node = _agent(sim, tmp_path, policy(mode="Observe"))
    run(sim, node, 120.0)
    assert Reporter(agent).build(NOW).efficiency.enforce_estimate_percent == 0.0


H200 = {"gpus": [{"profile": "h200"}, {"profile": "h200"}]}


def _agent(sim: Simulation, state_dir: Path, ref: PolicyRef) -> tuple[NodeAgent, SimNode]:
    state_dir.mkdir(parents=True, exist_ok=True)
    agent = NodeAgent(sim.backend, "sim-node-0", StateFile(state_dir / "state.json"))
    node = SimNode(sim, agent, scrape_interval_s=0.25)
    node.publish_pods()
    agent.set_policy(ref)
    return agent, node


def test_enforce_reports_no_estimate_only_what_it_measured(
    sim: Simulation, make_agent: Make
) -> None:
    agent, node = make_agent(policy())
    run(sim, node, 120.0)
    eff = Reporter(agent).build(NOW).efficiency
    assert eff.enforce_estimate_percent == 0.0 and eff.enforce_estimate_method == ""
