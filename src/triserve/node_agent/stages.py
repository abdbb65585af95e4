"""Resolve a pod's serving stage and triserve settings from its annotations and labels.

Called by the agent for every pod the pod watch (or the standalone/sim source) reports on
its node. The stage comes from the `triserve.io/stage` annotation, else from the role labels
of llm-d, NVIDIA Dynamo and KServe (`triserve.api.annotations.stage_from_role`). A malformed
annotation is logged, counted (`triserve_agent_errors_total{kind="annotation"}`) and that
one setting skipped; it never stops the agent or drops the rest of the pod.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from triserve.api.annotations import (
    DEFAULT_METRICS_PATH,
    GPUS_ANNOTATION,
    KNOWN_STAGES,
    METRICS_ANNOTATION,
    OPT_OUT_ANNOTATION,
    PIPELINE_ANNOTATION,
    ROLE_LABELS,
    STAGE_ANNOTATION,
    AnnotationError,
    parse_metrics_annotation,
    stage_from_role,
)

log = logging.getLogger(__name__)

#: Stage and pipeline names are DNS-label-like so they are safe as Prometheus label values.
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9_.]{0,61}[a-z0-9])?$")
_GPU_ID_RE = re.compile(r"^(\d{1,3}|GPU-[0-9A-Fa-f-]{8,}|MIG-[0-9A-Za-z/-]+)$")

#: Called with an error kind and a message for every malformed input that was skipped.
ErrorSink = Callable[[str, str], None]


def _log_only(kind: str, message: str) -> None:
    log.warning("%s: %s", kind, message)


@dataclass(frozen=True, slots=True)
class ServingPod:
    """A pod on this node that runs a serving stage, as the agent understands it.

    `gpu_ids` is the `triserve.io/gpus` override (indices or UUIDs), None when absent;
    `metrics_port` None means the pod exposes no serving metrics triserve can read;
    `uid` is the pod's metadata.uid, by which the hint endpoint knows who speaks.
    """

    namespace: str
    name: str
    stage: str
    pipeline: str | None = None
    metrics_port: int | None = None
    metrics_path: str = DEFAULT_METRICS_PATH
    gpu_ids: tuple[str, ...] | None = None
    opt_out: bool = False
    pod_ip: str | None = None
    containers: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    stage_source: str = "annotation"
    uid: str = ""

    @property
    def disaggregated_decode(self) -> bool:
        """True when a role label says this pod is the decode half of a disaggregated server.

        Such a worker (llm-d, NVIDIA Dynamo, KServe's `…-decode` components) receives its
        prompts' KV cache from a prefill worker: its queued requests wait for that transfer,
        and its prompt-token counter counts transferred tokens, so neither means prefill.
        """
        for key in ("llm-d.ai/role", "nvidia.com/dynamo-sub-component-type"):
            if self.labels.get(key, "").strip().lower() == "decode":
                return True
        return self.labels.get("app.kubernetes.io/component", "").lower().endswith("decode")

    @property
    def key(self) -> tuple[str, str]:
        """(namespace, name): how pod-resources and dcgm-exporter name the pod."""
        return (self.namespace, self.name)

    @property
    def ref(self) -> str:
        """`namespace/name`, as reports list pods."""
        return f"{self.namespace}/{self.name}"

    @property
    def upstream(self) -> tuple[str, ...]:
        """Stages that feed this one in the known pipelines (thinker → talker → code2wav …)."""
        return KNOWN_STAGES.get(self.stage, ())

    def metrics_url(self) -> str | None:
        """The serving engine's metrics URL, when the pod has an IP and a metrics port."""
        if self.metrics_port is None or not self.pod_ip:
            return None
        host = f"[{self.pod_ip}]" if ":" in self.pod_ip else self.pod_ip
        return f"http://{host}:{self.metrics_port}{self.metrics_path}"


def parse_gpus_annotation(value: str) -> tuple[str, ...]:
    """Parse a comma-separated list of GPU indices or UUIDs (``"0,1"`` or ``"GPU-…"``)."""
    ids = tuple(part.strip() for part in value.split(",") if part.strip())
    if not ids:
        raise AnnotationError("no GPU listed")
    bad = [gpu for gpu in ids if not _GPU_ID_RE.match(gpu)]
    if bad:
        raise AnnotationError(f"{', '.join(bad)} is neither a GPU index nor a GPU-/MIG- UUID")
    return ids


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"true", "yes", "1", "on"}:
        return True
    if lowered in {"false", "no", "0", "off", ""}:
        return False
    raise AnnotationError(f"{value!r} is not true or false")


def resolve_stage(
    annotations: Mapping[str, str], labels: Mapping[str, str]
) -> tuple[str, str] | None:
    """The pod's stage and where it came from (the annotation or a role label key), or None."""
    raw = annotations.get(STAGE_ANNOTATION)
    if raw is not None:
        stage = raw.strip().lower()
        if not _NAME_RE.match(stage):
            raise AnnotationError(
                f"{STAGE_ANNOTATION}={raw!r} is not a valid stage name (lowercase letters, "
                f"digits and '-', e.g. {', '.join(sorted(KNOWN_STAGES)[:3])})"
            )
        return stage, "annotation"
    for key in ROLE_LABELS:
        value = labels.get(key)
        if value is not None and (stage_from_role(key, value)) is not None:
            return str(stage_from_role(key, value)), key
    return None


def pod_from_manifest(pod: Mapping[str, Any], on_error: ErrorSink = _log_only) -> ServingPod | None:
    """Turn a pod manifest (a dict as the API returns it) into a `ServingPod`, or None.

    None means the pod is no serving pod triserve manages: no stage, not running, or
    finished. Malformed optional annotations are reported through `on_error` and skipped.
    """
    meta = pod.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
    if not name or meta.get("deletionTimestamp"):
        return None
    status = pod.get("status") or {}
    if status.get("phase") in {"Succeeded", "Failed"}:
        return None
    annotations = {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()}
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    where = f"pod {namespace}/{name}"
    try:
        resolved = resolve_stage(annotations, labels)
    except ValueError as exc:
        on_error("annotation", f"{where}: {exc}; the pod is not managed")
        return None
    if resolved is None:
        return None
    stage, source = resolved
    pipeline = annotations.get(PIPELINE_ANNOTATION)
    if pipeline is not None and not _NAME_RE.match(pipeline.strip()):
        on_error("annotation", f"{where}: {PIPELINE_ANNOTATION}={pipeline!r} ignored")
        pipeline = None
    port, path = None, DEFAULT_METRICS_PATH
    if METRICS_ANNOTATION in annotations:
        try:
            port, path = parse_metrics_annotation(annotations[METRICS_ANNOTATION])
        except ValueError as exc:
            on_error("annotation", f"{where}: {METRICS_ANNOTATION}: {exc}; metrics not read")
    gpu_ids = None
    if GPUS_ANNOTATION in annotations:
        try:
            gpu_ids = parse_gpus_annotation(annotations[GPUS_ANNOTATION])
        except ValueError as exc:
            on_error("annotation", f"{where}: {GPUS_ANNOTATION}: {exc}; override ignored")
    opt_out = False
    if OPT_OUT_ANNOTATION in annotations:
        try:
            opt_out = _parse_bool(annotations[OPT_OUT_ANNOTATION])
        except ValueError as exc:
            # Fail safe: an unreadable opt-out is taken as an opt-out.
            on_error("annotation", f"{where}: {OPT_OUT_ANNOTATION}: {exc}; treated as opt-out")
            opt_out = True
    containers = tuple(
        str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or [] if c.get("name")
    )
    return ServingPod(
        namespace=namespace,
        name=name,
        stage=stage,
        pipeline=pipeline.strip() if pipeline else None,
        metrics_port=port,
        metrics_path=path,
        gpu_ids=gpu_ids,
        opt_out=opt_out,
        pod_ip=status.get("podIP") or None,
        containers=containers,
        labels=labels,
        stage_source=source,
        uid=str(meta.get("uid") or ""),
    )


def pod_on_node(pod: Mapping[str, Any], node_name: str) -> bool:
    """True when the pod is scheduled on `node_name` (a client-side `spec.nodeName` check)."""
    return bool((pod.get("spec") or {}).get("nodeName") == node_name)
