"""Pod annotation keys, node labels and the role labels of other serving stacks.

Read by the node agent (stage resolution) and the operator (node placement). Besides lookups,
only the validation of the metrics annotation lives here, because it bounds what the agent
will request from a pod: a port and a plain path, nothing else (no host, query or `..`).
"""

from __future__ import annotations

import re
from typing import Final

GROUP: Final = "triserve.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

#: Node label the operator sets to hand a node to a policy; the agent DaemonSet selects on it.
POLICY_LABEL: Final = f"{GROUP}/policy"
#: Finalizer the operator puts on an EnergyPolicy until its nodes report their GPUs released.
POLICY_FINALIZER: Final = f"{GROUP}/release-gpus"

#: Pod annotations (all optional except `stage`, which may also come from a role label).
STAGE_ANNOTATION: Final = f"{GROUP}/stage"
PIPELINE_ANNOTATION: Final = f"{GROUP}/pipeline"
METRICS_ANNOTATION: Final = f"{GROUP}/metrics"  # "port" or "port/path", e.g. "8000/metrics"
DEFAULT_METRICS_PATH: Final = "/metrics"
#: Path segments of letters, digits, `_`, `~`, `-` and inner dots; no empty, `.` or `..` ones.
_METRICS_PATH_RE = re.compile(r"(/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)*/?")
_MAX_METRICS_PATH_CHARS = 128
GPUS_ANNOTATION: Final = f"{GROUP}/gpus"  # comma-separated GPU indices or UUIDs
OPT_OUT_ANNOTATION: Final = f"{GROUP}/opt-out"  # "true" keeps the pod's GPUs at default clocks

#: Role labels of other serving stacks, consulted in this order when `stage` is absent.
LLM_D_ROLE_LABEL: Final = "llm-d.ai/role"
DYNAMO_ROLE_LABEL: Final = "nvidia.com/dynamo-sub-component-type"
KSERVE_COMPONENT_LABEL: Final = "app.kubernetes.io/component"
ROLE_LABELS: Final = (LLM_D_ROLE_LABEL, DYNAMO_ROLE_LABEL, KSERVE_COMPONENT_LABEL)

#: Node signals that a node has GPUs.
GPU_RESOURCE: Final = "nvidia.com/gpu"
GPU_PRESENT_LABEL: Final = "nvidia.com/gpu.present"

#: Stages triserve knows, with the stages that feed them in the default pipelines.
KNOWN_STAGES: Final[dict[str, tuple[str, ...]]] = {
    "thinker": (),
    "talker": ("thinker",),
    "code2wav": ("talker",),
    "encoder": (),
    "prefill": ("encoder",),
    "decode": ("prefill",),
    "vocoder": ("decode",),
}

#: Stages that run autoregressively (a prefill then a decode phase).
AUTOREGRESSIVE_STAGES: Final = frozenset({"thinker", "talker", "decode", "prefill"})


def stage_from_role(label_key: str, value: str) -> str | None:
    """Map another stack's role label value to a triserve stage name, or None if unknown.

    llm-d and Dynamo use `prefill`/`decode` (llm-d also `both`, `encode`); KServe's component
    label ends in `-prefill` / `-decode` for disaggregated workloads.
    """
    value = value.strip().lower()
    if label_key in (LLM_D_ROLE_LABEL, DYNAMO_ROLE_LABEL):
        return {
            "prefill": "prefill",
            "decode": "decode",
            "encode": "encoder",
            "both": "decode",
        }.get(value)
    if label_key == KSERVE_COMPONENT_LABEL:
        for suffix, stage in (("prefill", "prefill"), ("decode", "decode")):
            if value.endswith(suffix):
                return stage
    return None


class AnnotationError(ValueError):
    """A pod annotation triserve cannot use; the message names the value and the fix."""


def parse_metrics_annotation(value: str) -> tuple[int, str]:
    """Parse ``"8000"``, ``"8000/metrics"`` or ``":8000/path"`` into (port, path).

    Raises `AnnotationError` unless the port is 1-65535 and the path is plain (letters,
    digits, ``_ ~ - .`` in ``/``-separated segments, at most 128 characters).
    """
    text = value.strip().removeprefix(":")
    port_text, sep, path = text.partition("/")
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        raise AnnotationError(f"port {port_text[:20]!r} is not a number in 1-65535")
    port = int(port_text)
    if not 0 < port < 65536:
        raise AnnotationError(f"port {port} is not in 1-65535")
    path = "/" + path if sep else DEFAULT_METRICS_PATH
    if len(path) > _MAX_METRICS_PATH_CHARS or not _METRICS_PATH_RE.fullmatch(path):
        raise AnnotationError(
            f"path {path[:40]!r} is not a plain URL path (use e.g. '8000/metrics': letters, "
            f"digits, '_', '~', '-', '.', at most {_MAX_METRICS_PATH_CHARS} characters)"
        )
    return port, path
