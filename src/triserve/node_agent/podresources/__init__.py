"""The kubelet pod-resources API (v1): which devices each container on this node holds.

`PodResourcesClient.list_gpus()` calls `v1.PodResourcesLister/List` over the kubelet's unix
socket (`/var/lib/kubelet/pod-resources/kubelet.sock`; mount the directory, not the file)
with grpc.aio, and keeps the GPU devices (`nvidia.com/gpu`, `nvidia.com/mig-*`). This is how
dcgm-exporter maps GPUs to pods, and the agent's first choice (`triserve.node_agent.gpumap`).
`api_pb2*.py` are generated from `api.proto` with grpcio-tools (see the proto's header).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any

import grpc

# The generated modules carry no type information; they are typed as Any at this one seam.
api_pb2: Any = importlib.import_module("triserve.node_agent.podresources.api_pb2")
api_pb2_grpc: Any = importlib.import_module("triserve.node_agent.podresources.api_pb2_grpc")

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
#: Resource names that are GPUs (whole devices and MIG slices).
GPU_RESOURCE_PREFIXES = ("nvidia.com/gpu", "nvidia.com/mig-")
#: The kubelet caps messages at 16 MiB; a node with many pods can approach the 4 MiB default.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ContainerGpus:
    """The GPU device ids (UUIDs by default, indices with some plugins) one container holds."""

    namespace: str
    pod: str
    container: str
    resource_name: str
    device_ids: tuple[str, ...]


class PodResourcesError(Exception):
    """The kubelet's pod-resources socket could not be reached or answered with an error."""


def _target(socket_path: str) -> str:
    return socket_path if socket_path.startswith("unix:") else f"unix://{socket_path}"


class PodResourcesClient:
    """An async client of `v1.PodResourcesLister`, one channel kept open across calls."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout_s: float = 2.0) -> None:
        """`socket_path` may be a path or a ``unix://`` target."""
        self.target = _target(socket_path)
        self.timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None

    def _stub(self) -> Any:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(
                self.target,
                options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
            )
        return api_pb2_grpc.PodResourcesListerStub(self._channel)

    async def list_gpus(self) -> list[ContainerGpus]:
        """Every container's GPU devices; raises PodResourcesError when the call fails."""
        try:
            response = await self._stub().List(
                api_pb2.ListPodResourcesRequest(), timeout=self.timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise PodResourcesError(
                f"pod-resources List on {self.target} failed: {exc.code().name}: {exc.details()}"
            ) from exc
        return gpus_from_response(response)

    async def close(self) -> None:
        """Close the channel (a later call opens a new one)."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


def gpus_from_response(response: Any) -> list[ContainerGpus]:
    """Flatten a List response into the GPU devices held by each container."""
    out: list[ContainerGpus] = []
    for pod in response.pod_resources:
        for container in pod.containers:
            for devices in container.devices:
                if not devices.resource_name.startswith(GPU_RESOURCE_PREFIXES):
                    continue
                ids = tuple(str(d) for d in devices.device_ids)
                if ids:
                    out.append(
                        ContainerGpus(
                            pod.namespace, pod.name, container.name, devices.resource_name, ids
                        )
                    )
    return out
