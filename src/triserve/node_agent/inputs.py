"""The node's inputs as the agent last heard them, and what they map to on its GPUs.

`NodeInputs` keeps the latest of everything fed from outside the tick — serving pods (the
cluster watch or a standalone source), pod-resources and dcgm-exporter data, serving scrapes
(`triserve.node_agent.scraping`) — and two flags that say what a tick must recompute: the
pod-to-GPU mapping (`remap_due`) or only the stage observations (`stages_due`). `placements`
maps the pods a policy selects onto the GPUs (`triserve.node_agent.gpumap`); `mig_reason`
says why a GPU in MIG mode may only be observed.

Owned by `triserve.node_agent.agent.NodeAgent`, which calls every method under its lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from triserve.api.models import LabelSelector, MigMode
from triserve.api.selectors import matches
from triserve.gpu.backend import GpuIdentity
from triserve.node_agent.dcgm import DcgmSnapshot
from triserve.node_agent.gpumap import GpuIndex, Placement, map_pods
from triserve.node_agent.podresources import ContainerGpus
from triserve.node_agent.stages import ServingPod
from triserve.telemetry import ServingSnapshot

PodKey = tuple[str, str]


class NodeInputs:
    """Pods, device data and scrapes of one node, with what changed since the last tick."""

    def __init__(self, identities: Sequence[GpuIdentity]) -> None:
        """`identities` are the node's GPUs (device ids in the inputs resolve against them)."""
        self.gpu_index = GpuIndex(identities)
        self.pods: dict[PodKey, ServingPod] = {}
        self.pod_resources: list[ContainerGpus] | None = None
        self.dcgm: DcgmSnapshot | None = None
        self.serving: dict[PodKey, ServingSnapshot] = {}
        self.serving_engines: dict[PodKey, Mapping[str, ServingSnapshot]] = {}
        self._uids: dict[str, PodKey] = {}
        #: The pod-to-GPU mapping must be rebuilt before the next tick.
        self.remap_due = True
        #: The stage observations must be rebuilt from the scrapes before the next tick.
        self.stages_due = True

    def set_gpus(self, identities: Sequence[GpuIdentity]) -> None:
        """The node's GPUs changed (found late, enumerated again, MIG mode): remap."""
        self.gpu_index = GpuIndex(identities)
        self.remap_due = True

    def invalidate_mapping(self) -> None:
        """The mapping must be rebuilt before the next tick (a policy or a GPU changed)."""
        self.remap_due = True

    def invalidate_stages(self) -> None:
        """The stage observations must be rebuilt (a hint arrived)."""
        self.stages_due = True

    def stages_refreshed(self) -> None:
        """The stage observations were just rebuilt from these inputs."""
        self.stages_due = False

    def set_pods(self, pods: Iterable[ServingPod]) -> None:
        """Replace the serving pods; scrapes of pods that left are dropped."""
        self.pods = {p.key: p for p in pods}
        self._uids = {p.uid: p.key for p in self.pods.values() if p.uid}
        self.serving = {k: v for k, v in self.serving.items() if k in self.pods}
        self.serving_engines = {k: v for k, v in self.serving_engines.items() if k in self.pods}
        self.remap_due = True

    def set_pod_resources(self, entries: Sequence[ContainerGpus] | None) -> None:
        """New pod-resources data (None: the kubelet could not be asked)."""
        new = list(entries) if entries is not None else None
        if new != self.pod_resources:
            self.pod_resources = new
            self.remap_due = True

    def set_dcgm(self, snapshot: DcgmSnapshot | None) -> None:
        """New dcgm-exporter data; the mapping is due only when its pod labels changed."""
        old, self.dcgm = self.dcgm, snapshot
        if old is None or snapshot is None or _dcgm_pods(old) != _dcgm_pods(snapshot):
            self.remap_due = True

    def set_serving(
        self, key: PodKey, snapshot: ServingSnapshot, engines: Mapping[str, ServingSnapshot]
    ) -> None:
        """A fresh scrape of pod `key` (ignored once the pod has left)."""
        if key in self.pods:
            self.serving[key] = snapshot
            self.serving_engines[key] = dict(engines)
            self.stages_due = True

    def pod_of(self, uid: str) -> PodKey | None:
        """The serving pod with UID `uid`, if it runs on this node."""
        return self._uids.get(uid)

    def selected(self, selector: LabelSelector | None) -> list[ServingPod]:
        """The pods `selector` selects (None: no policy, so none)."""
        if selector is None:
            return []
        return [p for p in self.pods.values() if matches(selector, p.labels)]

    def placements(
        self,
        selected: Sequence[ServingPod],
        on_unmapped: Callable[[ServingPod, str], None],
        trusted_namespaces: Iterable[str] = (),
    ) -> dict[int, list[Placement]]:
        """GPU index → the selected pods placed on it; clears `remap_due`.

        `trusted_namespaces`: whose `triserve.io/gpus` annotations count (`gpumap`).
        """
        self.remap_due = False
        self.stages_due = True
        return map_pods(
            selected,
            self.gpu_index,
            self.pod_resources,
            self.dcgm,
            on_unmapped=on_unmapped,
            trusted_namespaces=frozenset(trusted_namespaces),
        )

    def mig_reason(
        self,
        identity: GpuIdentity,
        mode: MigMode | None,
        selected: Sequence[ServingPod],
    ) -> str | None:
        """Why a GPU in MIG mode may only be observed, or None (not MIG, or governable).

        Clocks are per physical GPU and shared by every MIG instance. Only a policy with
        ``mig.mode: GovernWhenExclusive`` (`mode`; None: no policy) may govern one, and only
        while dcgm-exporter shows a pod on every instance and each of those pods is selected.
        """
        dcgm = self.dcgm
        entry = dcgm.for_gpu(identity.index, identity.uuid) if dcgm else None
        if not identity.mig_enabled and (entry is None or not entry.mig):
            return None
        shared = "MIG mode: SM clocks are per physical GPU and shared by every MIG instance"
        if mode is not MigMode.GOVERN_WHEN_EXCLUSIVE:
            return f"{shared}, so the GPU is observed, not governed (see spec.mig.mode)"
        if entry is None or not entry.mig:
            return (
                f"{shared}; mig.mode GovernWhenExclusive needs dcgm-exporter's per-instance "
                "series with pod labels to check every instance, and none are seen: observed"
            )
        ours = {p.key for p in selected}
        for instance_id, instance in sorted(entry.instances.items()):
            pods = {(ns, name) for ns, name, _container in instance.pods}
            if not pods:
                return f"{shared}; MIG instance {instance_id} has no pod, so it is observed"
            foreign = sorted(f"{ns}/{name}" for ns, name in pods - ours)
            if foreign:
                return (
                    f"{shared}; MIG instance {instance_id} runs {', '.join(foreign[:3])}, which "
                    "this policy does not select, so the GPU is observed"
                )
        return None


def _dcgm_pods(snapshot: DcgmSnapshot) -> set[tuple[str, str, str, str, str]]:
    """Every (GPU, MIG instance or "", namespace, pod, container) the scrape names."""
    return {
        (g.uuid or g.gpu, instance_id, *p)
        for g in snapshot.gpus.values()
        for instance_id, pods in [
            ("", g.pods),
            *((i.instance_id, i.pods) for i in g.instances.values()),
        ]
        for p in pods
    }
