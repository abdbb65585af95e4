"""The operator places policies on GPU nodes: labels, conflicts, relabelling, node churn."""

from __future__ import annotations

import pytest

from triserve.operator.settings import OperatorSettings

from .harness import Cluster, eventually, running_operator

pytestmark = pytest.mark.looptime

H100 = {"nvidia.com/gpu.product": "H100"}


async def test_create_labels_matching_gpu_nodes_and_becomes_ready(
    cluster: Cluster, settings: OperatorSettings
) -> None:
    await cluster.add_node("gpu-1", H100)
    await cluster.add_node("gpu-2", H100)
    await cluster.add_node("a100-1", {"nvidia.com/gpu.product": "A100"})
    await cluster.add_node("cpu-1", H100, gpus=0)
    async with running_operator(cluster, settings):
        await cluster.apply_policy("omni", {"nodeSelector": {"matchLabels": H100}})
        await eventually(
            lambda: cluster.node_policy("gpu-1") == "omni" == cluster.node_policy("gpu-2"),
            what="both H100 nodes labelled",
        )
        assert cluster.node_policy("a100-1") is None
        assert cluster.node_policy("cpu-1") is None
        await cluster.report("gpu-1", "omni", managedGpus=8, policyGeneration=1)
        await cluster.report("gpu-2", "omni", managedGpus=8, policyGeneration=1)
        ready = await eventually(
            lambda: cluster.condition("omni", "Ready").get("status") == "True",
            what="Ready=True",
        )
        assert ready
        status = (cluster.policy("omni") or {})["status"]
        assert status["nodes"]["targeted"] == 2
        assert status["gpus"]["managed"] == 16
        assert status["observedGeneration"] == 1
        assert cluster.condition("omni", "Ready")["reason"] == "Reconciled"
        assert cluster.events("NodesPlaced")


async def test_overlapping_policies_leave_the_loser_conflicted_with_an_event(
    cluster: Cluster, settings: OperatorSettings
) -> None:
    await cluster.add_node("gpu-1", H100)
    await cluster.add_node("gpu-2", {**H100, "pool": "batch"})
    async with running_operator(cluster, settings):
        await cluster.apply_policy("broad", {"nodeSelector": {"matchLabels": H100}, "priority": 10})
        await eventually(lambda: cluster.node_policy("gpu-2") == "broad", what="broad placed")
        await cluster.apply_policy(
            "batch", {"nodeSelector": {"matchLabels": {"pool": "batch"}}, "priority": 50}
        )
        await eventually(lambda: cluster.node_policy("gpu-2") == "batch", what="batch wins gpu-2")
        assert cluster.node_policy("gpu-1") == "broad"
        conflicted = await eventually(
            lambda: (
                cluster.condition("broad", "Conflicted").get("status") == "True"
                and cluster.condition("broad", "Conflicted")
            ),
            what="broad Conflicted",
        )
        assert conflicted["reason"] == "LostToPolicy"
        assert "batch" in conflicted["message"] and "gpu-2" in conflicted["message"]
        await eventually(lambda: cluster.events("LostToPolicy"), what="LostToPolicy event")
        event = cluster.events("LostToPolicy")[0]
        assert event["type"] == "Warning"
        assert event["involvedObject"]["name"] == "broad"
        assert cluster.condition("batch", "Conflicted")["status"] == "False"
        released = cluster.events("NodesReleased")
        assert any("now held by policy batch" in e["message"] for e in released)


async def test_equal_priority_overlap_goes_to_the_older_policy(
    cluster: Cluster, settings: OperatorSettings
) -> None:
    await cluster.add_node("gpu-1", H100)
    async with running_operator(cluster, settings):
        await cluster.apply_policy("zz-older", {"nodeSelector": {"matchLabels": H100}})
        await eventually(lambda: cluster.node_policy("gpu-1") == "zz-older", what="placed")
        await cluster.apply_policy("aa-newer", {})
        await eventually(
            lambda: cluster.condition("aa-newer", "Ready").get("reason") == "LostToPolicy",
            what="newer policy loses",
        )
        assert cluster.node_policy("gpu-1") == "zz-older"


async def test_selector_update_moves_the_labels(
    cluster: Cluster, settings: OperatorSettings
) -> None:
    await cluster.add_node("h100", H100)
    await cluster.add_node("a100", {"nvidia.com/gpu.product": "A100"})
    async with running_operator(cluster, settings):
        await cluster.apply_policy("omni", {"nodeSelector": {"matchLabels": H100}})
        await eventually(lambda: cluster.node_policy("h100") == "omni", what="h100 placed")
        expr = {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["A100"]}
        await cluster.patch_policy(
            "omni", {"nodeSelector": {"matchLabels": None, "matchExpressions": [expr]}}
        )
        await eventually(
            lambda: cluster.node_policy("a100") == "omni" and cluster.node_policy("h100") is None,
            what="labels moved to a100",
        )
        await eventually(
            lambda: (
                ((cluster.policy("omni") or {}).get("status") or {}).get("observedGeneration") == 2
            ),
            what="observedGeneration 2",
        )


async def test_nodes_joining_leaving_and_relabelled_are_replaced(
    cluster: Cluster, settings: OperatorSettings
) -> None:
    await cluster.add_node("gpu-1", H100)
    async with running_operator(cluster, settings):
        await cluster.apply_policy("omni", {"nodeSelector": {"matchLabels": H100}})
        await eventually(lambda: cluster.node_policy("gpu-1") == "omni", what="gpu-1 placed")
        await cluster.add_node("gpu-2", H100)
        await cluster.add_node("by-label", {**H100, "nvidia.com/gpu.present": "true"}, gpus=0)
        await eventually(
            lambda: cluster.node_policy("gpu-2") == "omni" == cluster.node_policy("by-label"),
            what="new GPU nodes placed",
        )

        def targeted() -> int:
            status = (cluster.policy("omni") or {}).get("status") or {}
            return int((status.get("nodes") or {}).get("targeted", -1))

        await eventually(lambda: targeted() == 3, what="3 nodes targeted")
        await cluster.delete_node("gpu-2")
        await eventually(lambda: targeted() == 2, what="2 nodes targeted after delete")
        await cluster.patch_node("gpu-1", {"nvidia.com/gpu.product": "L40S"})
        await eventually(lambda: cluster.node_policy("gpu-1") is None, what="gpu-1 unlabelled")
        await eventually(lambda: targeted() == 1, what="1 node targeted")


async def test_startup_sweeps_labels_of_policies_that_no_longer_exist(
    cluster: Cluster, settings: OperatorSettings
) -> None:
    await cluster.add_node("gpu-1", {**H100, "triserve.io/policy": "gone"})
    await cluster.add_node("gpu-2", {"triserve.io/policy": "gone"})
    await cluster.apply_policy("omni", {"nodeSelector": {"matchLabels": H100}})
    async with running_operator(cluster, settings):
        await eventually(
            lambda: cluster.node_policy("gpu-1") == "omni" and cluster.node_policy("gpu-2") is None,
            what="stale labels swept",
        )


async def test_no_matching_nodes_is_reported(cluster: Cluster, settings: OperatorSettings) -> None:
    await cluster.add_node("cpu-1", H100, gpus=0)
    async with running_operator(cluster, settings):
        await cluster.apply_policy("omni", {"nodeSelector": {"matchLabels": H100}})
        ready = await eventually(
            lambda: (
                cluster.condition("omni", "Ready").get("reason") == "NoMatchingNodes"
                and cluster.condition("omni", "Ready")
            ),
            what="NoMatchingNodes",
        )
        assert ready["status"] == "False"
        assert "nvidia.com/gpu.product=H100" in ready["message"]
        assert cluster.node_policy("cpu-1") is None
