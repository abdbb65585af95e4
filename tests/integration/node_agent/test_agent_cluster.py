"""The agent against real protocols on loopback: kmock's API server, a pod-resources gRPC
server on a unix socket, and HTTP dcgm-exporter and vLLM metrics endpoints; GPUs simulated."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import kmock
import pytest
import yaml
from kubernetes import client

from tests.support.eventually import eventually
from tests.support.httpserver import http_server
from triserve.api.status import GpuState
from triserve.node_agent.podresources import api_pb2, api_pb2_grpc
from triserve.node_agent.runtime import AgentOptions, AgentRuntime
from triserve.sim import Simulation, load_scenario, with_overrides
from triserve.simnode.node import driver_for

CRDS = Path(__file__).resolve().parents[3] / "crds"
NODE = "node-1"


def _register_crds(k8s: kmock.KubernetesEmulator) -> None:
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        names = crd["spec"]["names"]
        k8s.resources[f"triserve.io/v1alpha1/{names['plural']}"] = kmock.ResourceInfo(
            kind=names["kind"], singular=names["singular"], namespaced=False,
            subresources={"status"},
            verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
        )  # fmt: skip


class PodResources(api_pb2_grpc.PodResourcesListerServicer):  # type: ignore[misc]
    """A kubelet stand-in: the stage pods hold the simulated GPUs' UUIDs."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def List(self, request: Any, context: Any) -> Any:
        pods = []
        for p in self.sim.placements:
            uuid = self.sim.backend.identity(p.gpu_index).uuid
            device = api_pb2.ContainerDevices(resource_name="nvidia.com/gpu", device_ids=[uuid])
            container = api_pb2.ContainerResources(name=p.container, devices=[device], cpu_ids=[2])
            pods.append(api_pb2.PodResources(name=p.pod, namespace=p.namespace,
                                             containers=[container]))  # fmt: skip
        return api_pb2.ListPodResourcesResponse(pod_resources=pods)


def pod(name: str, stage: str, port: int, node: str = NODE, **ann: str) -> client.V1Pod:
    annotations = {"triserve.io/stage": stage, "triserve.io/pipeline": "qwen3-omni",
                   "triserve.io/metrics": f"{port}/{stage}", **ann}  # fmt: skip
    return client.V1Pod(
        api_version="v1", kind="Pod",
        metadata=client.V1ObjectMeta(name=name, namespace="omni", annotations=annotations,
                                     labels={"app": "omni"}),
        spec=client.V1PodSpec(node_name=node, containers=[client.V1Container(name=stage)]),
        status=client.V1PodStatus(phase="Running", pod_ip="127.0.0.1"),
    )  # fmt: skip


def policy(name: str, mode: str) -> dict[str, Any]:
    return {"apiVersion": "triserve.io/v1alpha1", "kind": "EnergyPolicy",
            "metadata": {"name": name, "generation": 1},
            "spec": {"mode": mode, "podSelector": {"matchLabels": {"app": "omni"}}}}  # fmt: skip


@contextlib.asynccontextmanager
async def cluster() -> AsyncIterator[tuple[kmock.KubernetesEmulator, str]]:
    async with kmock.KubernetesEmulator() as k8s, kmock.Server(k8s, host="127.0.0.1") as srv:
        k8s.resources.load_bundled()
        _register_crds(k8s)
        yield k8s, str(srv.url).rstrip("/")


async def test_agent_discovers_maps_controls_reports_and_follows_its_node_label(
    tmp_path: Path,
) -> None:
    # Ideal counters: this test is about discovery, mapping and the lock/report path, so it
    # needs the agent to lock early; realistic counters lock less (docs/calibration.md).
    sim = Simulation(with_overrides(load_scenario("reference"), {"telemetry.counters": "ideal"}))
    socket_path = tmp_path / "kubelet.sock"
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    api_pb2_grpc.add_PodResourcesListerServicer_to_server(PodResources(sim), grpc_server)
    grpc_server.add_insecure_port(f"unix://{socket_path}")
    grpc_server.start()
    routes: dict[str, Callable[[], str]] = {
        f"/{p.stage}": functools.partial(sim.serving_exposition, p.stage) for p in sim.placements
    }
    routes["/broken"] = lambda: "this is { not prometheus"
    routes["/dcgm"] = lambda: sim.dcgm_exposition(NODE)
    with http_server(lambda path: routes[path]() if path in routes else None) as port:
        async with cluster() as (k8s, url):
            api = client.ApiClient(client.Configuration(host=url))
            core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
            call = asyncio.to_thread
            node_meta = client.V1ObjectMeta(
                name=NODE, uid="node-uid-1", labels={"triserve.io/policy": "p1"}
            )
            await call(
                core.create_node, client.V1Node(api_version="v1", kind="Node", metadata=node_meta)
            )
            for name, mode in (("p1", "Enforce"), ("p2", "Observe")):
                await call(custom.create_cluster_custom_object, "triserve.io", "v1alpha1",
                           "energypolicies", policy(name, mode))  # fmt: skip
            for p in sim.placements:
                await call(core.create_namespaced_pod, "omni", pod(p.pod, p.stage, port))
            await call(
                core.create_namespaced_pod, "omni", pod("elsewhere", "thinker", port, node="node-2")
            )
            await call(core.create_namespaced_pod, "omni", pod("odd", "talker", port, **{
                "triserve.io/metrics": f"{port}/broken", "triserve.io/gpus": "seven"}))  # fmt: skip

            options = AgentOptions(
                node_name=NODE, state_file=tmp_path / "state.json", metrics_port=0,
                metrics_host="127.0.0.1", backend=sim.backend, node_driver=driver_for(sim),
                speed=20.0, api_client=api,
                dcgm_url=f"http://127.0.0.1:{port}/dcgm",
                pod_resources_socket=str(socket_path), scrape_interval_s=0.2,
                report_interval_s=5.0, watch_timeout_s=2.0,
            )  # fmt: skip
            runtime = AgentRuntime(options)
            task = asyncio.create_task(runtime.run())
            agent = runtime.agent
            try:
                await eventually(lambda: all(g.governed for g in agent.gpus.values()), "control")
                gpus = agent.gpus
                assert {p.pod.name for p in gpus[1].placements} == {
                    "qwen3-omni-talker-0", "qwen3-omni-code2wav-0"}  # fmt: skip
                assert {p.source for g in gpus.values() for p in g.placements} == {"pod-resources"}
                assert "omni/elsewhere" not in {p.pod.ref for g in gpus.values()
                                                for p in g.placements}  # fmt: skip
                await eventually(lambda: len(agent.inputs.serving) >= 3, "serving scrapes")

                # The controllers act: a stall or ridge lock was decided and applied. Locks
                # come and go within a tick of simulated time (stalls park), so count the
                # applied clock changes rather than poll the GPU's lock state.
                def locked() -> bool:
                    gpus = agent.gpus.values()
                    decided = any(
                        g.totals.decisions.get("stall", 0) + g.totals.decisions.get("ridge", 0)
                        for g in gpus
                    )
                    return decided and any(
                        g.loop is not None and g.loop.clock_sets > 0 for g in gpus
                    )

                await eventually(locked, "a clock lock")
                await eventually(lambda: agent.errors["scrape"] > 0, "the broken scrape counted")

                def report() -> dict[str, Any] | None:
                    try:
                        obj = k8s.objects["triserve.io/v1alpha1/nodeenergyreports", None, NODE]
                    except KeyError:
                        return None
                    return None if obj.deleted else dict(obj.raw)

                first = await eventually(
                    lambda: (r := report()) and r.get("status", {}).get("energy", {}).get("joules")
                    and r, "a NodeEnergyReport with energy")  # fmt: skip
                assert first["metadata"]["ownerReferences"][0]["kind"] == "Node"
                assert first["metadata"]["ownerReferences"][0]["uid"] == "node-uid-1"
                assert first["status"]["phase"] == "Managing" and first["status"]["policy"] == "p1"
                assert len(first["status"]["gpus"]) == 2

                # The label switches to the Observe policy: no restart, locks released.
                await call(
                    core.patch_node, NODE, {"metadata": {"labels": {"triserve.io/policy": "p2"}}}
                )
                await eventually(
                    lambda: agent.policy and agent.policy.name == "p2", "the switch to p2"
                )
                observed = [GpuState.OBSERVED] * 2
                await eventually(
                    lambda: [g.state for g in agent.gpus.values()] == observed, "observing"
                )
                assert [sim.backend.locked_sm_clocks_mhz(i) for i in range(2)] == [None, None]

                # The label goes away: every GPU released and the report says so.
                await call(
                    core.patch_node, NODE, {"metadata": {"labels": {"triserve.io/policy": None}}}
                )
                await eventually(lambda: agent.policy is None, "release")
                await eventually(lambda: (r := report()) and
                                 r["status"]["phase"] == "Released", "Released report")  # fmt: skip
            finally:
                runtime.stop()
                await asyncio.wait_for(task, timeout=15)
                grpc_server.stop(0)
    assert [sim.backend.locked_sm_clocks_mhz(i) for i in range(2)] == [None, None]


pytestmark = pytest.mark.timeout(90)
