"""Power-budget caps on the agent: a ceiling under every decision, restored on every path."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.unit.node_agent.conftest import policy, run
from triserve.api.powercaps import PowerCaps
from triserve.node_agent.agent import NodeAgent
from triserve.node_agent.reports import Reporter
from triserve.node_agent.safety import StateFile
from triserve.sim import Simulation
from triserve.simnode.node import SimNode

MakeAgent = Callable[..., tuple[NodeAgent, SimNode]]
BUDGETED: dict[str, Any] = {"powerBudget": {"watts": 2000}}


def _limit_w(sim: Simulation, index: int) -> float:
    return sim.backend.power_limit_mw(index) / 1000.0


def _caps(sim: Simulation, name: str = "p1", **by_index: int) -> PowerCaps:
    watts = {sim.backend.identity(int(i[1:])).uuid: w for i, w in by_index.items()}
    return PowerCaps(policy=name, watts=watts)


def test_each_gpu_runs_under_the_cap_the_operator_wrote(
    sim: Simulation, make_agent: MakeAgent
) -> None:
    agent, node = make_agent(policy(**BUDGETED))
    agent.set_power_caps(_caps(sim, g0=300, g1=450))
    run(sim, node, 5.0)
    assert _limit_w(sim, 0) == 300 and _limit_w(sim, 1) == 450
    report = Reporter(agent).build(dt.datetime.now(tz=dt.UTC))
    gpu0 = report.gpus[0]
    assert gpu0.power_cap_watts == 300
    assert gpu0.power_limit_min_watts > 0 and gpu0.power_limit_max_watts >= 300
    assert gpu0.operating_points and gpu0.operating_points[-1].cap_watts == 300


def test_a_gpu_without_a_cap_waits_at_its_minimum_limit(
    sim: Simulation, make_agent: MakeAgent
) -> None:
    agent, node = make_agent(policy(**BUDGETED))
    agent.set_power_caps(_caps(sim, "another-policy", g0=600, g1=600))
    run(sim, node, 1.0)
    minimum_w = sim.backend.power_limit_constraints_mw(0).min_mw / 1000.0
    assert _limit_w(sim, 0) == minimum_w and _limit_w(sim, 1) == minimum_w


def test_a_lowered_cap_applies_on_the_next_tick(sim: Simulation, make_agent: MakeAgent) -> None:
    agent, node = make_agent(policy(**BUDGETED))
    agent.set_power_caps(_caps(sim, g0=500, g1=500))
    run(sim, node, 1.0)
    agent.set_power_caps(_caps(sim, g0=250, g1=500))
    run(sim, node, 1.1)
    assert _limit_w(sim, 0) == 250


def test_without_a_budget_the_power_limit_is_left_alone(
    sim: Simulation, make_agent: MakeAgent
) -> None:
    agent, node = make_agent(policy())
    agent.set_power_caps(_caps(sim, g0=250, g1=250))
    default_w = sim.backend.power_limit_constraints_mw(0).default_mw / 1000.0
    run(sim, node, 1.0)
    assert _limit_w(sim, 0) == default_w


def test_shutdown_and_policy_removal_restore_the_default_power_limit(
    sim: Simulation, make_agent: MakeAgent
) -> None:
    default_w = sim.backend.power_limit_constraints_mw(0).default_mw / 1000.0
    agent, node = make_agent(policy(**BUDGETED))
    agent.set_power_caps(_caps(sim, g0=300, g1=300))
    run(sim, node, 1.0)
    agent.set_policy(None)
    assert _limit_w(sim, 0) == default_w and _limit_w(sim, 1) == default_w
    agent.set_policy(policy(**BUDGETED))
    run(sim, node, 2.0)
    assert _limit_w(sim, 0) == 300
    assert agent.shutdown() == []
    assert _limit_w(sim, 0) == default_w and _limit_w(sim, 1) == default_w
    assert agent.state_file.held() == {}


def test_a_restarted_agent_restores_the_caps_a_crashed_one_left(
    sim: Simulation, make_agent: MakeAgent, tmp_path: Path
) -> None:
    default_w = sim.backend.power_limit_constraints_mw(0).default_mw / 1000.0
    agent, node = make_agent(policy(**BUDGETED))
    agent.set_power_caps(_caps(sim, g0=300, g1=300))
    run(sim, node, 1.0)
    assert _limit_w(sim, 0) == 300  # the agent dies here without a shutdown
    after = NodeAgent(sim.backend, "sim-node-0", StateFile(tmp_path / "state.json"))
    after.startup()
    assert _limit_w(sim, 0) == default_w and _limit_w(sim, 1) == default_w


def test_a_policy_power_cap_below_the_budget_cap_is_the_one_in_force(
    sim: Simulation, make_agent: MakeAgent
) -> None:
    agent, node = make_agent(policy(strategy="PowerCap", powerCap={"watts": 250}, **BUDGETED))
    agent.set_power_caps(_caps(sim, g0=400, g1=400))
    run(sim, node, 1.0)
    assert _limit_w(sim, 0) == 250
    report = Reporter(agent).build(dt.datetime.now(tz=dt.UTC))
    assert all(p.capped_seconds == 0 for g in report.gpus for p in g.operating_points)


def test_an_observing_policy_reports_no_cap_and_sets_none(
    sim: Simulation, make_agent: MakeAgent
) -> None:
    agent, node = make_agent(policy(mode="Observe", **BUDGETED))
    agent.set_power_caps(_caps(sim, g0=250, g1=250))
    default_w = sim.backend.power_limit_constraints_mw(0).default_mw / 1000.0
    run(sim, node, 1.0)
    assert _limit_w(sim, 0) == default_w
    report = Reporter(agent).build(dt.datetime.now(tz=dt.UTC))
    assert all(g.power_cap_watts == 0 for g in report.gpus)
