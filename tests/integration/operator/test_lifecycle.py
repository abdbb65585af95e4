"""Deletion (finalizer, release, timeout) and restarts (no duplicate writes)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from triserve.api.annotations import GROUP, POLICY_FINALIZER
from triserve.operator.reconciler import Placer, StatusUpdate
from triserve.operator.settings import OperatorSettings

from .harness import Cluster, eventually, running_operator

pytestmark = pytest.mark.looptime

H100 = {"nvidia.com/gpu.product": "H100"}


def has_finalizer(cluster: Cluster, policy: str) -> bool:
    """Whether the operator's finalizer is on the policy (kopf adds it on first sight)."""
    return POLICY_FINALIZER in ((cluster.policy(policy) or {}).get("metadata") or {}).get(
        "finalizers", []
    )


def release_progress(cluster: Cluster, policy: str) -> dict[str, Any]:
    """kopf's record of the release handler on the policy (retries, last message), or {}."""
    annotations = ((cluster.policy(policy) or {}).get("metadata") or {}).get("annotations") or {}
    return dict(json.loads(annotations.get(f"{GROUP}/release", "{}")))


def record_status_passes(placer: Placer) -> list[bool]:
    """Note each status pass of this operator: True when it chose to patch the status."""
    passes: list[bool] = []
    decide = placer.status_update

    def recording(*args: Any, **kwargs: Any) -> StatusUpdate:
        update = decide(*args, **kwargs)
        passes.append(bool(update.patch))
        return update

    placer.status_update = recording  # type: ignore[method-assign]
    return passes


async def test_delete_unlabels_and_waits_for_agents_to_release(
    cluster: Cluster, settings: OperatorSettings
) -> None:
    # A release timeout far beyond the test's pace: a loaded CI machine must not reach it.
    settings = dataclasses.replace(settings, release_timeout_s=60.0)
    await cluster.add_node("gpu-1", H100)
    async with running_operator(cluster, settings):
        await cluster.apply_policy("omni", {"nodeSelector": {"matchLabels": H100}})
        await eventually(lambda: cluster.node_policy("gpu-1") == "omni", what="placed")
        await eventually(lambda: has_finalizer(cluster, "omni"), what="finalizer added")
        await cluster.report("gpu-1", "omni", policyGeneration=1)
        await cluster.delete_policy("omni")
        await eventually(lambda: cluster.node_policy("gpu-1") is None, what="label removed")
        # The agent has not answered: the operator checks again after each poll and keeps
        # the policy. Two recorded checks show it got past the unlabelling and chose to wait.
        await eventually(
            lambda: (
                release_progress(cluster, "omni").get("retries", 0) >= 2
                and "have not reported phase Released: gpu-1"
                in release_progress(cluster, "omni").get("message", "")
            ),
            what="the release handler waiting for gpu-1's agent",
        )
        assert cluster.policy("omni") is not None
        assert not cluster.events("GpusReleased")
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
        # Deleted before kopf has added its finalizer, the policy would simply vanish.
        await eventually(lambda: has_finalizer(cluster, "omni"), what="finalizer added")
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
    async with running_operator(cluster, settings) as placer:
        passes = record_status_passes(placer)
        await cluster.apply_policy("omni", {"nodeSelector": {"matchLabels": H100}})
        for name in ("gpu-1", "gpu-2", "gpu-3"):
            await cluster.report(name, "omni", policyGeneration=1, managedGpus=8)
        await eventually(
            lambda: cluster.condition("omni", "Ready").get("status") == "True", what="Ready"
        )
        # Settled: a status pass after Ready found nothing left to write.
        await eventually(lambda: not passes[-1], what="a status pass with nothing to write")
    node_patches = len(cluster.patches("/nodes/"))
    policy_patches = len(cluster.patches("/energypolicies/"))
    assert node_patches == 3  # one label each, never repeated
    async with running_operator(cluster, settings) as placer:
        passes = record_status_passes(placer)
        # Each pass re-places every node before deciding on the status; by the third, the
        # first two have finished whatever writes they chose. The virtual clock has moved
        # two intervals meanwhile, which it does only when no task can run, so the start-up
        # handlers have finished theirs too.
        await eventually(lambda: len(passes) >= 3, what="three status passes after the restart")
        assert not any(passes)
        assert cluster.condition("omni", "Ready").get("status") == "True"
    assert len(cluster.patches("/nodes/")) == node_patches
    assert len(cluster.patches("/energypolicies/")) == policy_patches
