"""Parse dcgm-exporter's Prometheus text: per-GPU activity and the pods dcgm-exporter maps.

The agent scrapes the dcgm-exporter of its own node (`triserve.node_agent.scraping`) and
uses two things from it: tensor/DRAM/SM activity for component A when the backend has no
activity counters of its own, and the pod/namespace/container labels as the second way to
map pods to GPUs. Both label generations are read: `Hostname` (released charts) or
`hostname` (newer code), and `pod`/`namespace`/`container` or, with
`--use-old-namespace`, `pod_name`/`pod_namespace`/`container_name`.

Cross-node data never gets through: a series whose host label names another host is
dropped, and a scrape in which no series names this node raises `ForeignScrapeError`
(the usual cause is a `--dcgm-url` pointing at a cluster Service that load-balances over
every node's exporter). Series without a host label are kept only when the caller vouches
that the URL is node-local (`accept_unlabelled`).

Values are checked per series: DCGM's blank sentinels, non-finite values and fractions
outside [0, 1] (DCGM can report MIG ratios above 1, NVIDIA/DCGM#152) leave that field
unknown instead of becoming a number. MIG instances (`GPU_I_ID` label) keep their own
activity and pods and never fold into the parent GPU. See docs/telemetry.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from triserve.gpu.backend import Activity
from triserve.node_agent.promtext import ScrapeError, read_samples

TENSOR_ACTIVE = "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"
DRAM_ACTIVE = "DCGM_FI_PROF_DRAM_ACTIVE"
SM_ACTIVE = "DCGM_FI_PROF_SM_ACTIVE"
GR_ENGINE_ACTIVE = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
ACTIVITY_METRICS = frozenset({TENSOR_ACTIVE, DRAM_ACTIVE, SM_ACTIVE, GR_ENGINE_ACTIVE})
#: Families read only for their pod labels (any one is enough to map pods to GPUs).
LABEL_METRICS = frozenset({"DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_GPU_UTIL"})
WANTED_METRICS = ACTIVITY_METRICS | LABEL_METRICS

#: DCGM's "no value" sentinels (dcgm_structs.h): int32, int64 and fp64 blanks and the
#: NOT_FOUND / NOT_SUPPORTED / NOT_PERMISSIONED values just above them.
_BLANK_RANGES = (
    (2147483632.0, 2147483647.0),
    (9223372036854775792.0, 9223372036854775807.0),
    (140737488355328.0, 140737488355343.0),
)
#: Rounding slack above 1.0 that is still read as 1.0.
_FRACTION_SLACK = 1e-3


class ForeignScrapeError(ScrapeError):
    """No series of the scrape names this node: the data is another node's."""


def is_blank(value: float) -> bool:
    """True for DCGM's blank / not-found / not-supported sentinel values."""
    return any(lo <= value <= hi for lo, hi in _BLANK_RANGES)


def fraction(value: float) -> float | None:
    """A DCGM_FI_PROF ratio in [0, 1], or None when the value cannot be one."""
    if is_blank(value) or not 0.0 <= value <= 1.0 + _FRACTION_SLACK:
        return None
    return min(value, 1.0)


@dataclass(slots=True)
class _ActivityFields:
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

    def set(self, metric: str, value: float | None) -> None:
        if metric == TENSOR_ACTIVE:
            self.tensor_active = value
        elif metric == DRAM_ACTIVE:
            self.dram_active = value
        elif metric == SM_ACTIVE:
            self.sm_active = value
        elif metric == GR_ENGINE_ACTIVE:
            self.gr_engine_active = value


@dataclass(slots=True)
class MigInstance(_ActivityFields):
    """One MIG GPU instance (`GPU_I_ID`) of a physical GPU, with its own activity and pods."""

    instance_id: str = ""
    profile: str = ""


@dataclass(slots=True)
class DcgmGpu(_ActivityFields):
    """What one scrape said about one physical GPU (fractions in [0, 1]; None if unknown).

    In MIG mode the GPU-level fields stay None and `instances` holds each instance;
    `activity()` is then None, because no single instance speaks for the whole GPU.
    """

    gpu: str = ""
    uuid: str = ""
    hostname: str = ""
    instances: dict[str, MigInstance] = field(default_factory=dict)

    @property
    def mig(self) -> bool:
        """True when dcgm-exporter reported MIG instances on this GPU."""
        return bool(self.instances)

    def all_pods(self) -> set[tuple[str, str, str]]:
        """Pods on the GPU or on any of its MIG instances."""
        pods = set(self.pods)
        for instance in self.instances.values():
            pods |= instance.pods
        return pods


@dataclass(frozen=True, slots=True)
class DcgmSnapshot:
    """One dcgm-exporter scrape of this node: GPUs keyed by UUID (``"index:N"`` if none).

    `rejected_values` counts series whose value was a sentinel or out of range;
    `skipped_series` counts unparsable, non-finite and repeated series; `foreign_series`
    counts series of other hosts that were dropped.
    """

    timestamp_s: float
    gpus: dict[str, DcgmGpu]
    rejected_values: int = 0
    skipped_series: int = 0
    foreign_series: int = 0

    def for_gpu(self, index: int, uuid: str) -> DcgmGpu | None:
        """The entry of the GPU with this UUID, else the UUID-less one with this index."""
        entry = self.gpus.get(uuid)
        if entry is not None:
            return entry
        entry = self.gpus.get(f"index:{index}")
        # An index only identifies a GPU when the exporter gave no UUID for it.
        return entry if entry is not None and not entry.uuid else None


def _label(labels: Mapping[str, str], *names: str) -> str:
    for name in names:
        value = labels.get(name)
        if value:
            return value
    return ""


def parse_dcgm(
    text: str,
    timestamp_s: float,
    node_name: str,
    *,
    accept_unlabelled: bool = False,
    hostnames: frozenset[str] = frozenset(),
) -> DcgmSnapshot:
    """Parse exporter text, keeping only this node's series.

    A series is this node's when its `Hostname`/`hostname` label is `node_name` or one of
    `hostnames` (dcgm-exporter without `NODE_NAME` labels hosts with its pod name), or when
    it has no host label and `accept_unlabelled` is set. Raises `ForeignScrapeError` when
    series exist but none is this node's, and `ScrapeError` for an empty scrape.
    """
    result = read_samples(text, lambda name: name in WANTED_METRICS)
    accepted = {node_name, *hostnames} - {""}
    gpus: dict[str, DcgmGpu] = {}
    foreign: set[str] = set()
    rejected = kept = foreign_series = 0
    for sample in result.samples:
        labels = sample.labels
        gpu_index = labels.get("gpu", "")
        uuid = labels.get("UUID", "") or labels.get("uuid", "")
        if not gpu_index and not uuid:
            continue
        host = _label(labels, "Hostname", "hostname")
        if (host and host not in accepted) or (not host and not accept_unlabelled):
            foreign.add(host or "<no Hostname label>")
            foreign_series += 1
            continue
        kept += 1
        key = uuid or f"index:{gpu_index}"
        entry = gpus.get(key)
        if entry is None:
            entry = gpus[key] = DcgmGpu(gpu=gpu_index, uuid=uuid, hostname=host)
        target: _ActivityFields = entry
        instance_id = labels.get("GPU_I_ID", "")
        if instance_id:
            profile = labels.get("GPU_I_PROFILE", "")
            target = entry.instances.setdefault(
                instance_id, MigInstance(instance_id=instance_id, profile=profile)
            )
        pod = _label(labels, "pod", "pod_name")
        if pod:
            namespace = _label(labels, "namespace", "pod_namespace")
            container = _label(labels, "container", "container_name")
            target.pods.add((namespace, pod, container))
        if sample.name in ACTIVITY_METRICS:
            value = fraction(sample.value)
            rejected += value is None
            target.set(sample.name, value)
    if kept == 0 and foreign:
        raise ForeignScrapeError(_foreign_message(node_name, accepted, foreign, accept_unlabelled))
    return DcgmSnapshot(
        timestamp_s,
        gpus,
        rejected_values=rejected,
        skipped_series=result.skipped,
        foreign_series=foreign_series,
    )


def _foreign_message(
    node_name: str, accepted: set[str], foreign: set[str], accept_unlabelled: bool
) -> str:
    hosts = ", ".join(sorted(foreign)[:5])
    hint = (
        "point --dcgm-url at this node's exporter (the chart's default discovers it), "
        "or pass --dcgm-hostname when dcgm-exporter runs without NODE_NAME"
    )
    if not accept_unlabelled and foreign == {"<no Hostname label>"}:
        hint = "the series carry no Hostname label; use a node-local exporter URL"
    return (
        f"dcgm-exporter data is not node {node_name}'s: series name host(s) {hosts}, "
        f"expected {', '.join(sorted(accepted)) or node_name!r}; {hint}"
    )
