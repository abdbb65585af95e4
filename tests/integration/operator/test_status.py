"""Policy status: agent reports aggregate into counts, energy, efficiency and conditions."""

from __future__ import annotations

from typing import Any

import pytest

from triserve.operator.settings import OperatorSettings

from .harness import Cluster, eventually, running_operator

pytestmark = pytest.mark.looptime

H100 = {"nvidia.com/gpu.product": "H100"}


def _node_report(joules: float, watts: float, tokens: float, baseline: float) -> dict[str, Any]:
    gpu = {"index": 0, "uuid": "GPU-0", "state": "Managed"}
    return {
        "policyGeneration": 1,
        "managedGpus": 8,
        "gpus": [gpu],
        "pods": {"thinker": 1, "talker": 2},
        "energy": {"joules": joules, "averageWatts": watts, "windowSeconds": 30},
        "efficiency": {
            "tokens": tokens,
            "tokensPerJoule": tokens / joules,
            "baselineTokensPerJoule": baseline,
            "method": "pmu-model",
        },
    }


async def test_agent_reports_are_aggregated_into_status(
    cluster: Cluster, settings: OperatorSettings
) -> None:
    await cluster.add_node("gpu-1", H100)
    await cluster.add_node("gpu-2", H100)
    async with running_operator(cluster, settings):
        await cluster.apply_policy("omni", {"nodeSelector": {"matchLabels": H100}})
        await eventually(lambda: cluster.node_policy("gpu-2") == "omni", what="placed")
        await cluster.report("gpu-1", "omni", **_node_report(3000, 100, 3000, 0.8))
        await cluster.report("gpu-2", "omni", **_node_report(6000, 200, 12000, 1.6))

        def status() -> dict[str, Any]:
            return dict((cluster.policy("omni") or {}).get("status") or {})

        await eventually(lambda: status().get("nodes", {}).get("reporting") == 2, what="2 report")
        result = status()
        assert result["gpus"]["managed"] == 16
        assert result["pods"] == {"talker": 4, "thinker": 2}
        assert result["energy"] == {"joules": 9000, "averageWatts": 150, "windowSeconds": 30}
        efficiency = result["efficiency"]
        assert efficiency["tokens"] == 15000
        assert abs(efficiency["tokensPerJoule"] - 15000 / 9000) < 1e-3
        # Baseline energy for the same tokens: 3000/0.8 + 12000/1.6 = 11250 J.
        assert abs(efficiency["baselineTokensPerJoule"] - 15000 / 11250) < 1e-3
        assert abs(efficiency["improvementPercent"] - 25.0) < 0.1
        assert cluster.condition("omni", "Ready")["status"] == "True"


async def test_silent_agents_make_the_policy_degraded(
    cluster: Cluster, settings: OperatorSettings
) -> None:
    await cluster.add_node("gpu-1", H100)
    await cluster.add_node("gpu-2", H100)
    async with running_operator(cluster, settings):
        await cluster.apply_policy("omni", {"nodeSelector": {"matchLabels": H100}})
        await eventually(lambda: cluster.node_policy("gpu-2") == "omni", what="placed")
        await cluster.report("gpu-1", "omni", policyGeneration=1)
        await cluster.report(
            "gpu-2", "omni", policyGeneration=1, lastReportTime="2020-01-01T00:00:00Z"
        )
        degraded = await eventually(
            lambda: (
                cluster.condition("omni", "Degraded").get("status") == "True"
                and cluster.condition("omni", "Degraded")
            ),
            what="Degraded=True",
        )
        assert degraded["reason"] == "AgentsNotReporting"
        assert "gpu-2" in degraded["message"]
        ready = cluster.condition("omni", "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "AgentsNotReporting")
        await eventually(lambda: cluster.events("AgentsNotReporting"), what="warning event")


async def test_invalid_spec_is_a_condition_and_a_warning_not_a_crash(
    cluster: Cluster, settings: OperatorSettings
) -> None:
    await cluster.add_node("gpu-1", H100)
    async with running_operator(cluster, settings):
        await cluster.apply_policy("bad", {"clockLimits": {"minMHz": 1500, "maxMHz": 900}})
        ready = await eventually(
            lambda: (
                cluster.condition("bad", "Ready").get("reason") == "InvalidSpec"
                and cluster.condition("bad", "Ready")
            ),
            what="InvalidSpec",
        )
        assert ready["status"] == "False"
        assert ready["message"].startswith("spec.clockLimits")
        assert "1500" in ready["message"] and "maxMHz" in ready["message"]
        await eventually(lambda: cluster.events("InvalidSpec"), what="InvalidSpec event")
        assert cluster.events("InvalidSpec")[0]["type"] == "Warning"
        assert cluster.node_policy("gpu-1") is None
        # Fixing the spec recovers without a restart.
        await cluster.patch_policy("bad", {"clockLimits": {"minMHz": 0}})
        await eventually(lambda: cluster.node_policy("gpu-1") == "bad", what="placed once valid")
