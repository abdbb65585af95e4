"""Parse dcgm-exporter's Prometheus text: per-GPU activity and the pods dcgm-exporter maps.

The agent scrapes dcgm-exporter (`:9400/metrics`) at its scrape interval
(`triserve.node_agent.scraping`) and uses two things from it: tensor/DRAM/SM activity for
component A when the backend has no activity counters of its own, and the
pod/namespace/container labels as the second way to map pods to GPUs. Both label
generations are read: `Hostname` (released charts) or `hostname` (newer code), and
`pod`/`namespace`/`container` or, with `--use-old-namespace`, `pod_name`/`pod_namespace`/
`container_name`. Unparsable text raises `ValueError` for the caller to count and skip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from triserve.gpu.backend import Activity

TENSOR_ACTIVE = "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"
DRAM_ACTIVE = "DCGM_FI_PROF_DRAM_ACTIVE"
SM_ACTIVE = "DCGM_FI_PROF_SM_ACTIVE"
GR_ENGINE_ACTIVE = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
_ACTIVITY_METRICS = frozenset({TENSOR_ACTIVE, DRAM_ACTIVE, SM_ACTIVE, GR_ENGINE_ACTIVE})


@dataclass(slots=True)
class DcgmGpu:
    """What one scrape said about one GPU (fractions in [0, 1]; None when not exported)."""

    gpu: str
    uuid: str = ""
    hostname: str = ""
    tensor_active: float | None = None
    dram_active: float | None = None
    sm_active: float | None = None
    gr_engine_active: float | None = None
    pods: set[tuple[str, str, str]] = field(default_factory=set)

    def activity(self) -> Activity | None:
        """Activity for the controller, when tensor and DRAM activity were both exported."""
        if self.tensor_active is None or self.dram_active is None:
            return None
        sm = self.sm_active if self.sm_active is not None else self.gr_engine_active
        return Activity(
            tensor_active=self.tensor_active,
            dram_active=self.dram_active,
            sm_active=sm if sm is not None else max(self.tensor_active, self.dram_active),
        )


@dataclass(frozen=True, slots=True)
class DcgmSnapshot:
    """One dcgm-exporter scrape: GPUs keyed by UUID (or by ``"index:N"`` when UUID-less)."""

    timestamp_s: float
    gpus: dict[str, DcgmGpu]

    def for_gpu(self, index: int, uuid: str) -> DcgmGpu | None:
        """The entry of the GPU with this UUID, else the one with this index."""
        entry = self.gpus.get(uuid)
        if entry is not None:
            return entry
        return self.gpus.get(f"index:{index}")


def _label(labels: dict[str, str], *names: str) -> str:
    for name in names:
        value = labels.get(name)
        if value:
            return value
    return ""


def _fraction(value: float) -> float | None:
    if math.isnan(value) or value < 0:
        return None
    # Some exporter versions publish percentages for the PROF fields.
    return min(value / 100.0 if value > 1.0 else value, 1.0)


def parse_dcgm(text: str, timestamp_s: float, node_name: str = "") -> DcgmSnapshot:
    """Parse exporter text; keeps series whose host label is `node_name` (or has none).

    When no series names this node (dcgm-exporter without `NODE_NAME` labels hosts with its
    pod name), every series is kept: one exporter pod serves exactly one node.
    """
    by_host: dict[str, dict[str, DcgmGpu]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            gpu = labels.get("gpu", "")
            uuid = labels.get("UUID", "") or labels.get("uuid", "")
            if not gpu and not uuid:
                continue
            host = _label(labels, "Hostname", "hostname")
            key = uuid or f"index:{gpu}"
            entry = by_host.setdefault(host, {}).get(key)
            if entry is None:
                entry = by_host[host][key] = DcgmGpu(gpu=gpu, uuid=uuid, hostname=host)
                if uuid and gpu:
                    by_host[host].setdefault(f"index:{gpu}", entry)
            pod = _label(labels, "pod", "pod_name")
            if pod:
                namespace = _label(labels, "namespace", "pod_namespace")
                container = _label(labels, "container", "container_name")
                entry.pods.add((namespace, pod, container))
            if sample.name in _ACTIVITY_METRICS:
                _set_activity(entry, sample.name, float(sample.value))
    if node_name and node_name in by_host:
        chosen = {**by_host.get("", {}), **by_host[node_name]}
    else:
        chosen = {}
        for gpus in by_host.values():
            for key, entry in gpus.items():
                chosen.setdefault(key, entry)
    return DcgmSnapshot(timestamp_s, chosen)


def _set_activity(entry: DcgmGpu, metric: str, value: float) -> None:
    fraction = _fraction(value)
    if metric == TENSOR_ACTIVE:
        entry.tensor_active = fraction
    elif metric == DRAM_ACTIVE:
        entry.dram_active = fraction
    elif metric == SM_ACTIVE:
        entry.sm_active = fraction
    else:
        entry.gr_engine_active = fraction
