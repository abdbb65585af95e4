"""Deletion (finalizer, release, timeout) and restarts (no duplicate writes)."""

from __future__ import annotations

import asyncio
import dataclasses

from triserve.api.annotations import POLICY_FINALIZER
from triserve.operator.settings import OperatorSettings

from .harness import Cluster, eventually, running_operator

H100 = {"nvidia.com/gpu.product": "H100"}


async def test_delete_unlabels_and_waits_for_agents_to_release(
    cluster: Cluster, settings: OperatorSettings
) -> None:
    # A release timeout far beyond the test's pace: a loaded CI machine must not reach it.
    settings = dataclasses.replace(settings, release_timeout_s=60.0)
    await cluster.add_node("gpu-1", H100)
    async with running_operator(cluster, settings):
        await cluster.apply_policy("omni", {"nodeSelector": {"matchLabels": H100}})
        await eventually(lambda: cluster.node_policy("gpu-1") == "omni", what="placed")
        await eventually(
            lambda: (
                POLICY_FINALIZER in (cluster.policy("omni") or {})["metadata"].get("finalizers", [])
            ),
            what="finalizer added",
        )
        await cluster.report("gpu-1", "omni", policyGeneration=1)
        await cluster.delete_policy("omni")
        await eventually(lambda: cluster.node_policy("gpu-1") is None, what="label removed")
        await asyncio.sleep(0.5)  # the agent has not answered yet: the policy must stay
        assert cluster.policy("omni") is not None
        await cluster.report("gpu-1", "", phase="Released")
        await eventually(lambda: cluster.policy("omni") is None, what="policy gone")
        assert cluster.events("GpusReleased")
        assert not cluster.events("ReleaseTimedOut")


async def test_delete_gives_up_after_the_timeout_when_an_agent_never_answers(
    cluster: Cluster, settings: OperatorSettings
) -> None:
    await cluster.add_node("gpu-1", H100)
    async with running_operator(cluster, settings):
        await cluster.apply_policy("omni", {"nodeSelector": {"matchLabels": H100}})
        await eventually(lambda: cluster.node_policy("gpu-1") == "omni", what="placed")
        await cluster.report("gpu-1", "omni", policyGeneration=1)
        await cluster.delete_policy("omni")
        await eventually(lambda: cluster.policy("omni") is None, timeout_s=15, what="policy gone")
        assert cluster.node_policy("gpu-1") is None
        event = cluster.events("ReleaseTimedOut")[0]
        assert event["type"] == "Warning" and "gpu-1" in event["message"]


async def test_restart_changes_nothing_that_is_already_right(
    cluster: Cluster, settings: OperatorSettings
) -> None:
    for name in ("gpu-1", "gpu-2", "gpu-3"):
        await cluster.add_node(name, H100)
    async with running_operator(cluster, settings):
        await cluster.apply_policy("omni", {"nodeSelector": {"matchLabels": H100}})
        for name in ("gpu-1", "gpu-2", "gpu-3"):
            await cluster.report(name, "omni", policyGeneration=1, managedGpus=8)
        await eventually(
            lambda: cluster.condition("omni", "Ready").get("status") == "True", what="Ready"
        )
        await asyncio.sleep(4 * settings.status_interval_s)  # let the status settle
    node_patches = len(cluster.patches("/nodes/"))
    policy_patches = len(cluster.patches("/energypolicies/"))
    assert node_patches == 3  # one label each, never repeated
    async with running_operator(cluster, settings):
        await asyncio.sleep(6 * settings.status_interval_s)
        assert cluster.condition("omni", "Ready").get("status") == "True"
    assert len(cluster.patches("/nodes/")) == node_patches
    assert len(cluster.patches("/energypolicies/")) == policy_patches
