"""The operator against a real test cluster: apply a policy, see the label, delete it.

Opt-in (`pytest tests/e2e --with-e2e`), refused on any context that is not a test cluster.
Test clusters seldom have GPUs, so the test marks one node as a GPU node with the
`nvidia.com/gpu.present=true` label (and a per-run label the policy selects), and removes
both afterwards. No agent runs, so deletion finishes through the release timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from tests.support.eventually import eventually
from triserve.api.annotations import GPU_PRESENT_LABEL, POLICY_LABEL
from triserve.operator import main as operator_main
from triserve.operator.settings import OperatorSettings

pytestmark = pytest.mark.e2e
GROUP, VERSION, PLURAL = "triserve.io", "v1alpha1", "energypolicies"
T = TypeVar("T")


@contextlib.asynccontextmanager
async def operator(settings: OperatorSettings) -> AsyncIterator[None]:
    """The real operator, in-process, logged in with the kubeconfig."""
    registry = operator_main.registered(settings).registry
    stop = asyncio.Event()
    task = asyncio.create_task(operator_main.operate(registry, stop_flag=stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


def in_thread(check: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    """A blocking API check, run in a thread so the in-process operator keeps running."""
    return lambda: asyncio.to_thread(check)


async def test_policy_lifecycle_on_a_real_cluster(kube: Any) -> None:
    from kubernetes import client

    core, custom = client.CoreV1Api(kube), client.CustomObjectsApi(kube)
    run = uuid.uuid4().hex[:8]
    marker, policy = f"triserve-e2e-{run}", f"e2e-{run}"
    first = core.list_node().items[0].metadata
    assert first is not None and first.name is not None, "the first node has no name"
    node, had_gpu_label = first.name, GPU_PRESENT_LABEL in (first.labels or {})
    core.patch_node(node, {"metadata": {"labels": {marker: "yes", GPU_PRESENT_LABEL: "true"}}})
    settings = OperatorSettings(status_interval_s=2, release_timeout_s=5, release_poll_s=1)

    def node_policy() -> str | None:
        meta = core.read_node(node).metadata
        return ((meta.labels if meta else None) or {}).get(POLICY_LABEL)

    def policy_gone() -> bool:
        try:
            custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, policy)
        except client.ApiException as exc:
            return bool(exc.status == 404)
        return False

    try:
        async with operator(settings):
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "EnergyPolicy",
                "metadata": {"name": policy},
                "spec": {"nodeSelector": {"matchLabels": {marker: "yes"}}, "priority": 1},
            }
            custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
            await eventually(in_thread(lambda: node_policy() == policy), "the node label", poll_s=1)

            def conditions() -> list[Any]:
                obj = custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, policy)
                assert isinstance(obj, dict), f"{policy} read back as {type(obj).__name__}"
                return list((obj.get("status") or {}).get("conditions") or [])

            found = await eventually(in_thread(conditions), "status conditions", poll_s=1)
            assert {c["type"] for c in found} >= {"Ready", "Progressing", "Degraded", "Conflicted"}
            custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, policy)
            await eventually(
                in_thread(lambda: node_policy() is None), "the label removed", poll_s=1
            )
            await eventually(in_thread(policy_gone), "the finalizer removed", poll_s=1)
    finally:
        restore: dict[str, str | None] = {marker: None}
        if not had_gpu_label:
            restore[GPU_PRESENT_LABEL] = None
        core.patch_node(node, {"metadata": {"labels": restore}})
        if not policy_gone():
            custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, policy)
