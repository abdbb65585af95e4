"""Stage resolution: annotations, role labels, and malformed input skipped, never fatal."""

from __future__ import annotations

from typing import Any

from triserve.node_agent.stages import pod_from_manifest, pod_on_node


def manifest(annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None,
             **status: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "annotations": annotations or {},
            "labels": labels or {},
        },
        "spec": {"nodeName": "n1", "containers": [{"name": "engine"}]},
        "status": {"phase": "Running", "podIP": "10.0.0.7", **status},
    }


def test_stage_annotation_with_metrics_port_and_path_builds_the_scrape_url() -> None:
    pod = pod_from_manifest(manifest({
        "triserve.io/stage": "Talker", "triserve.io/pipeline": "omni",
        "triserve.io/metrics": "8000/metrics/vllm", "triserve.io/gpus": "0, GPU-1234abcd-0000",
    }))  # fmt: skip
    assert pod is not None
    assert (pod.stage, pod.pipeline, pod.upstream) == ("talker", "omni", ("thinker",))
    assert pod.metrics_url() == "http://10.0.0.7:8000/metrics/vllm"
    assert pod.gpu_ids == ("0", "GPU-1234abcd-0000")
    assert pod.containers == ("engine",)


def test_role_labels_of_llm_d_dynamo_and_kserve_give_the_stage() -> None:
    cases = {
        "llm-d.ai/role": ("prefill", "prefill"),
        "nvidia.com/dynamo-sub-component-type": ("decode", "decode"),
        "app.kubernetes.io/component": ("llama-workload-prefill", "prefill"),
    }
    for key, (value, stage) in cases.items():
        pod = pod_from_manifest(manifest(labels={key: value}))
        assert pod is not None and pod.stage == stage and pod.stage_source == key


def test_pod_without_stage_or_finished_is_not_a_serving_pod() -> None:
    assert pod_from_manifest(manifest()) is None
    assert pod_from_manifest(manifest({"triserve.io/stage": "thinker"}, phase="Succeeded")) is None


def test_malformed_annotations_are_reported_and_skipped_not_fatal() -> None:
    errors: list[tuple[str, str]] = []
    pod = pod_from_manifest(
        manifest({
            "triserve.io/stage": "thinker", "triserve.io/metrics": "http:x",
            "triserve.io/gpus": "zero,,", "triserve.io/opt-out": "maybe",
            "triserve.io/pipeline": "Not A Name!",
        }),
        on_error=lambda kind, msg: errors.append((kind, msg)),
    )  # fmt: skip
    assert pod is not None and pod.stage == "thinker"
    assert pod.metrics_port is None and pod.gpu_ids is None and pod.pipeline is None
    assert pod.opt_out is True  # an unreadable opt-out fails safe
    assert len(errors) == 4 and all(kind == "annotation" for kind, _ in errors)
    assert any("triserve.io/metrics" in msg and "ns/p" in msg for _, msg in errors)


def test_invalid_stage_name_drops_the_pod_with_an_error() -> None:
    errors: list[str] = []
    pod = pod_from_manifest(manifest({"triserve.io/stage": "Thinker Stage!"}),
                            on_error=lambda kind, msg: errors.append(msg))  # fmt: skip
    assert pod is None and "not a valid stage name" in errors[0]


def test_node_check_is_client_side() -> None:
    assert pod_on_node(manifest(), "n1") and not pod_on_node(manifest(), "n2")
