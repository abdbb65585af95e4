"""Map serving pods to the GPUs they run on.

Three sources, tried in order for each pod (the first that places the pod wins):

1. the kubelet pod-resources API (`triserve.node_agent.podresources`): the devices each
   container was allocated — what dcgm-exporter itself uses;
2. the `pod`/`namespace` labels of dcgm-exporter series (`triserve.node_agent.dcgm`), for
   nodes where the agent cannot reach the kubelet socket;
3. the pod's `triserve.io/gpus` annotation (indices or UUIDs), for pods that hold GPUs
   outside the device plugin (shared or DRA-allocated GPUs). An annotation is a tenant's
   claim, so it is honoured only for pods of the namespaces the policy trusts
   (`spec.gpuAnnotations.trustedNamespaces`), and never for a GPU that pod-resources shows
   held by a pod of another namespace: otherwise any pod could attach itself to another
   team's GPU, opt it out, or feed its controller.

Device ids are matched against the backend's GPU UUIDs and indices; a MIG device
(``MIG-GPU-<uuid>/<gi>/<ci>``, as older device plugins name it) resolves to its parent GPU,
which the agent then only observes. A GPU may host several stage pods; the agent governs it
with all of their observations. Each placement records its GPU's position in the pod's
device order (`rank` of `of`): a data-parallel server's engines are attributed by it. Called by
`triserve.node_agent.agent.NodeAgent` whenever pods, pod-resources or dcgm data change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from triserve.gpu.backend import GpuIdentity
from triserve.node_agent.dcgm import DcgmSnapshot
from triserve.node_agent.podresources import ContainerGpus
from triserve.node_agent.stages import ServingPod


@dataclass(frozen=True, slots=True)
class Placement:
    """One serving pod on one GPU, with how the mapping was learned."""

    pod: ServingPod
    gpu_index: int
    container: str
    source: str  # "pod-resources", "dcgm" or "annotation"
    rank: int = 0  # position of this GPU in the pod's device order
    of: int = 1  # how many GPUs the pod holds


class GpuIndex:
    """Resolves device ids (UUID, ``GPU-…`` or a plain index) to node-local GPU indices."""

    def __init__(self, identities: Sequence[GpuIdentity]) -> None:
        """`identities` are the backend's GPUs."""
        self._by_id: dict[str, int] = {}
        for ident in identities:
            self._by_id[ident.uuid.lower()] = ident.index
            self._by_id[str(ident.index)] = ident.index

    def resolve(self, device_id: str) -> int | None:
        """The GPU index for a device id (a MIG device gives its parent), or None if unknown."""
        key = device_id.strip().lower()
        if key.startswith("mig-gpu-"):
            key = key.removeprefix("mig-").split("/", 1)[0]
        return self._by_id.get(key)


def map_pods(
    pods: Iterable[ServingPod],
    gpu_index: GpuIndex,
    pod_resources: Sequence[ContainerGpus] | None,
    dcgm: DcgmSnapshot | None,
    on_unmapped: Callable[[ServingPod, str], None] | None = None,
    trusted_namespaces: frozenset[str] = frozenset(),
) -> dict[int, list[Placement]]:
    """Placements per GPU index for every pod any source can place.

    `trusted_namespaces`: namespaces whose `triserve.io/gpus` annotations are honoured.
    """
    by_pod_res: dict[tuple[str, str], list[ContainerGpus]] = {}
    held_by: dict[int, set[str]] = {}  # GPU index → namespaces pod-resources shows on it
    for entry in pod_resources or ():
        by_pod_res.setdefault((entry.namespace, entry.pod), []).append(entry)
        for device_id in entry.device_ids:
            index = gpu_index.resolve(device_id)
            if index is not None:
                held_by.setdefault(index, set()).add(entry.namespace)
    by_pod_dcgm = _dcgm_pods(dcgm)
    result: dict[int, list[Placement]] = {}
    for pod in pods:
        placements = (
            _from_pod_resources(pod, by_pod_res.get(pod.key, ()), gpu_index)
            or _from_dcgm(pod, by_pod_dcgm.get(pod.key, ()), gpu_index)
            or _from_annotation(pod, gpu_index, trusted_namespaces, held_by)
        )
        if not placements and on_unmapped is not None:
            on_unmapped(pod, _why_unmapped(pod, pod_resources, dcgm, trusted_namespaces))
        for placement in placements:
            result.setdefault(placement.gpu_index, []).append(placement)
    return result


def _why_unmapped(
    pod: ServingPod,
    pod_resources: Sequence[ContainerGpus] | None,
    dcgm: DcgmSnapshot | None,
    trusted_namespaces: frozenset[str],
) -> str:
    sources = []
    sources.append("pod-resources has no GPU for it" if pod_resources is not None else "")
    sources.append("dcgm-exporter does not label a GPU with it" if dcgm is not None else "")
    if pod.gpu_ids is None:
        sources.append("no triserve.io/gpus annotation")
    elif pod.namespace not in trusted_namespaces:
        sources.append(
            f"its triserve.io/gpus annotation is ignored: namespace {pod.namespace} is not in "
            "the policy's spec.gpuAnnotations.trustedNamespaces (add it there if that "
            "namespace's annotations are trusted)"
        )
    else:
        sources.append(
            "its triserve.io/gpus annotation names no GPU of this node that pods of other "
            "namespaces do not hold"
        )
    detail = "; ".join(s for s in sources if s)
    return f"pod {pod.ref} (stage {pod.stage}) is on no known GPU: {detail}"


def _dedupe(placements: list[Placement]) -> list[Placement]:
    """First placement per GPU, in device order, each told its rank in that order."""
    seen: set[int] = set()
    out = []
    for placement in placements:
        if placement.gpu_index not in seen:
            seen.add(placement.gpu_index)
            out.append(placement)
    return [replace(p, rank=i, of=len(out)) for i, p in enumerate(out)]


def _from_pod_resources(
    pod: ServingPod, entries: Iterable[ContainerGpus], gpu_index: GpuIndex
) -> list[Placement]:
    placements = []
    for entry in entries:
        for device_id in entry.device_ids:
            index = gpu_index.resolve(device_id)
            if index is not None:
                placements.append(Placement(pod, index, entry.container, "pod-resources"))
    return _dedupe(placements)


def _dcgm_pods(dcgm: DcgmSnapshot | None) -> Mapping[tuple[str, str], list[tuple[str, str]]]:
    """(namespace, pod) → [(gpu uuid or index, container)] from dcgm-exporter labels."""
    out: dict[tuple[str, str], list[tuple[str, str]]] = {}
    if dcgm is None:
        return out
    for gpu in sorted(dcgm.gpus.values(), key=lambda g: (len(g.gpu), g.gpu)):
        device = gpu.uuid or gpu.gpu
        for namespace, pod, container in sorted(gpu.all_pods()):
            out.setdefault((namespace, pod), []).append((device, container))
    return out


def _from_dcgm(
    pod: ServingPod, devices: Iterable[tuple[str, str]], gpu_index: GpuIndex
) -> list[Placement]:
    placements = []
    for device, container in devices:
        index = gpu_index.resolve(device)
        if index is not None:
            placements.append(Placement(pod, index, container, "dcgm"))
    return _dedupe(placements)


def _from_annotation(
    pod: ServingPod,
    gpu_index: GpuIndex,
    trusted_namespaces: frozenset[str],
    held_by: Mapping[int, set[str]],
) -> list[Placement]:
    if pod.namespace not in trusted_namespaces:
        return []
    placements = []
    container = pod.containers[0] if pod.containers else ""
    for device in pod.gpu_ids or ():
        index = gpu_index.resolve(device)
        # Never a GPU the kubelet shows allocated to another namespace's pod.
        if index is not None and held_by.get(index, set()) <= {pod.namespace}:
            placements.append(Placement(pod, index, container, "annotation"))
    return _dedupe(placements)
