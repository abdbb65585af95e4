"""Pod annotation keys, node labels and the role labels of other serving stacks.

Read by the node agent (stage resolution) and the operator (node placement). No logic
beyond lookups lives here, so every layer can import it.
"""

from __future__ import annotations

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
