"""The saving users see is honest: the agent's own estimate of tokens/J at PMU-default clocks
(NodeEnergyReport `efficiency`, the EnergyPolicy "Saving" column) matches what a paired
replay of the same traffic under the PMU default measures.

The agent runs as `triserve demo` runs it — standalone, on the simulated reference node, with
its reports — but as fast as the simulator goes; the replay is what the demo prints beside
it. The agent never sees the replay or any simulator internals."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from triserve.api.models import EnergyPolicySpec
from triserve.api.status import NodeEnergyReportStatus
from triserve.node_agent.agent import PolicyRef
from triserve.node_agent.runtime import AgentOptions, AgentRuntime
from triserve.sim import Simulation, load_scenario
from triserve.simnode.demo import estimated_improvement
from triserve.simnode.node import driver_for

#: Percentage points the agent's estimated improvement may differ from the measured one.
TOLERANCE_PP = 3.0
#: Simulated seconds: long enough for a few probes per GPU at the default interval.
DURATION_S = 300.0


def _run_agent(sim: Simulation, tmp_path: Path) -> list[NodeEnergyReportStatus]:
    reports: list[NodeEnergyReportStatus] = []
    options = AgentOptions(
        node_name=sim.scenario.hostname,
        state_file=tmp_path / "state.json",
        metrics_port=0,
        metrics_host="127.0.0.1",
        policy=PolicyRef("triserve", EnergyPolicySpec.model_validate({}), 1),
        standalone=True,
        backend=sim.backend,
        node_driver=driver_for(sim),
        speed=1000.0,  # as fast as the simulator goes
        duration_s=DURATION_S,
        watchdog_timeout_s=120.0,  # one wall step may cover a minute of simulated time
        on_report=reports.append,
    )
    asyncio.run(AgentRuntime(options).run())
    return reports


@pytest.mark.parametrize("seed", [0, 3])
def test_estimated_saving_matches_the_paired_replay_under_the_pmu_default(
    tmp_path: Path, seed: int
) -> None:
    # No warm-up: the replay measures the same span the agent reports on.
    scenario = load_scenario("reference").model_copy(
        update={"duration_s": DURATION_S, "warmup_s": 0.0}
    )
    sim = Simulation(scenario, seed=seed)
    reports = _run_agent(sim, tmp_path)
    found = estimated_improvement(reports)
    assert found is not None, "the agent reported no energy"
    tpj, base_tpj = found
    estimated_pct = 100.0 * (tpj / base_tpj - 1.0)

    replay = Simulation(scenario, seed=seed)
    replay.run_until(sim.now_s)
    controlled, default = sim.report(), replay.report()
    measured_pct = 100.0 * (controlled.tokens_per_joule / default.tokens_per_joule - 1.0)

    summary = f"agent estimates {estimated_pct:+.1f}%, replay measures {measured_pct:+.1f}%"
    assert measured_pct > 3.0, summary  # the scenario does save energy
    assert estimated_pct <= measured_pct + TOLERANCE_PP, "over-claims the saving: " + summary
    assert abs(estimated_pct - measured_pct) <= TOLERANCE_PP, summary
    assert all("baseline probes" in r.efficiency.method for r in reports)
