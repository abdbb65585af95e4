"""The serving-pod examples parse, and the agent's stage discovery maps them as documented.

Each example's pods are built the way Kubernetes builds them (a Deployment's pod template; the
predictor's labels and annotations of a KServe InferenceService) and handed to
`triserve.node_agent.stages.pod_from_manifest`, the function the agent runs on every pod.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from triserve.node_agent.stages import ServingPod, pod_from_manifest

ROOT = Path(__file__).resolve().parents[3]
SERVING = ROOT / "examples" / "serving"
DOC = ROOT / "docs" / "serving-pods.md"

#: file -> pod name -> (stage, stage source, pipeline, metrics port/path or None, GPU ids).
EXPECTED: dict[str, dict[str, tuple[str, str, str, str | None, tuple[str, ...] | None]]] = {
    "qwen3-omni-vllm-omni.yaml": {
        "qwen3-omni-thinker": ("thinker", "annotation", "qwen3-omni", "8091/metrics", ("0",)),
        "qwen3-omni-talker": ("talker", "annotation", "qwen3-omni", None, ("1",)),
        "qwen3-omni-code2wav": ("code2wav", "annotation", "qwen3-omni", None, ("1",)),
    },
    "llm-d-prefill-decode.yaml": {
        "llama-prefill": ("prefill", "llm-d.ai/role", "llama-pd", "8000/metrics", None),
        "llama-decode": ("decode", "llm-d.ai/role", "llama-pd", "8000/metrics", None),
    },
    "kserve-inferenceservice.yaml": {
        "qwen-chat-predictor": ("decode", "annotation", "qwen-chat", "8080/metrics", None),
    },
}


def _pods(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The pods a workload object creates, as the API server would return them (Running)."""
    kind, meta = doc["kind"], doc["metadata"]
    if kind == "Deployment":
        template = doc["spec"]["template"]
        assert (
            doc["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        ), f"{meta['name']}: the selector does not select its own pods"
        name, pod_meta, spec = meta["name"], template["metadata"], template["spec"]
    elif kind == "InferenceService":
        predictor = doc["spec"]["predictor"]
        name = f"{meta['name']}-predictor"
        pod_meta = {k: predictor.get(k, {}) for k in ("labels", "annotations")}
        spec = {"containers": [{"name": "kserve-container"}]}
    else:
        return []
    return [
        {
            "metadata": {**pod_meta, "name": name, "namespace": meta["namespace"]},
            "spec": {**spec, "nodeName": "gpu-node-1"},
            "status": {"phase": "Running", "podIP": "10.0.0.9"},
        }
    ]


def _discover(path: Path) -> dict[str, ServingPod]:
    errors: list[str] = []
    found: dict[str, ServingPod] = {}
    for doc in yaml.safe_load_all(path.read_text()):
        for pod in _pods(doc):
            serving = pod_from_manifest(pod, on_error=lambda kind, msg: errors.append(msg))
            assert serving is not None, f"{path.name}: {pod['metadata']['name']} has no stage"
            found[serving.name] = serving
    assert errors == [], errors
    return found


def test_every_serving_example_is_covered() -> None:
    assert sorted(p.name for p in SERVING.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_serving_example_maps_as_documented(name: str) -> None:
    pods = _discover(SERVING / name)
    doc = DOC.read_text()
    assert f"examples/serving/{name}" in doc
    assert set(pods) == set(EXPECTED[name])
    for pod_name, (stage, source, pipeline, metrics, gpus) in EXPECTED[name].items():
        pod = pods[pod_name]
        assert (pod.stage, pod.stage_source, pod.pipeline) == (stage, source, pipeline)
        got = None if pod.metrics_port is None else f"{pod.metrics_port}{pod.metrics_path}"
        assert got == metrics
        assert pod.gpu_ids == gpus
        # The page's table for this example names the pod with its stage and metrics.
        row = next(line for line in doc.splitlines() if line.startswith(f"| `{pod_name}"))
        assert f"`{stage}`" in row and f"`{pipeline}`" in row, row
        assert (f":{metrics}" in row) if metrics else ("none" in row), row


def test_omni_example_puts_three_stages_on_two_gpus_in_one_pipeline() -> None:
    pods = _discover(SERVING / "qwen3-omni-vllm-omni.yaml").values()
    assert {p.stage for p in pods} == {"thinker", "talker", "code2wav"}
    assert {g for p in pods for g in (p.gpu_ids or ())} == {"0", "1"}
    by_stage = {p.stage: p for p in pods}
    assert by_stage["talker"].upstream == ("thinker",)
    assert by_stage["code2wav"].upstream == ("talker",)
    assert by_stage["thinker"].metrics_url() == "http://10.0.0.9:8091/metrics"


def test_examples_are_selected_by_the_full_policy_pod_selector_where_meant() -> None:
    """energypolicy-full.yaml selects part-of: qwen-omni; the Omni pods carry that label."""
    policy = yaml.safe_load((ROOT / "examples" / "energypolicy-full.yaml").read_text())
    wanted = policy["spec"]["podSelector"]["matchLabels"]
    pods = _discover(SERVING / "qwen3-omni-vllm-omni.yaml").values()
    assert all(wanted.items() <= dict(p.labels).items() for p in pods)
