"""A long-running agent keeps no report it already sent (issue 28: memory).

Before, the runtime appended every NodeEnergyReport it built to a list that only tests read:
about 9.5 KB per 2-GPU report, 2,880 reports a day, so an 8-GPU node reached the chart's 512 Mi
limit within days. The run below sends a report every simulated second through the production
`AgentRuntime` (as often as its driver steps: a few dozen); once it has stopped, at most the
last report may still be alive (before: every one of them).
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from triserve.api.models import EnergyPolicySpec
from triserve.api.status import NodeEnergyReportStatus
from triserve.node_agent.agent import PolicyRef
from triserve.node_agent.runtime import AgentOptions, AgentRuntime
from triserve.simnode import open_simulation
from triserve.simnode.node import driver_for

DURATION_S = 300.0


def test_a_long_run_keeps_no_report_it_already_sent(tmp_path: Path) -> None:
    sim = open_simulation("reference", seed=0)
    sent = 0

    def count(_status: NodeEnergyReportStatus) -> None:
        nonlocal sent
        sent += 1

    runtime = AgentRuntime(
        AgentOptions(
            node_name=sim.scenario.hostname,
            state_file=tmp_path / "state.json",
            metrics_port=0,
            metrics_host="127.0.0.1",
            policy=PolicyRef("triserve", EnergyPolicySpec.model_validate({}), 1),
            standalone=True,
            backend=sim.backend,
            node_driver=driver_for(sim),
            speed=60.0,
            duration_s=DURATION_S,
            report_interval_s=1.0,
            watchdog_timeout_s=120.0,
            on_report=count,
        )
    )
    assert asyncio.run(runtime.run()) == 0
    gc.collect()
    alive = sum(isinstance(o, NodeEnergyReportStatus) for o in gc.get_objects())
    assert sent >= 10
    assert alive <= 1, f"{alive} of {sent} reports are still held after the run"
    assert runtime.last_report is not None
