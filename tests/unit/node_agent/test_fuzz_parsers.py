"""Property tests: whatever a pod or exporter sends, parsers raise only our validation error
and nothing non-finite reaches a controller."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from triserve.api.annotations import AnnotationError, parse_metrics_annotation
from triserve.node_agent.dcgm import ACTIVITY_METRICS, parse_dcgm
from triserve.node_agent.promtext import ScrapeError
from triserve.node_agent.serving import parse_serving_scrape
from triserve.node_agent.stages import parse_gpus_annotation, pod_from_manifest
from triserve.telemetry import ServingSnapshot

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAMES = st.sampled_from(
    [
        "vllm:num_requests_running",
        "vllm:generation_tokens_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:e2e_request_latency_seconds_count",
        "sglang:num_running_reqs",
        "trtllm_num_requests_running",
        *sorted(ACTIVITY_METRICS),
        "DCGM_FI_DEV_SM_CLOCK",
        "other_metric",
    ]
)
LABEL_VALUES = st.one_of(
    st.sampled_from(["0", "1", "GPU-a", "n", "+Inf", "0.5", "1g.10gb", ""]), st.text(max_size=12)
)
LABELS = st.dictionaries(
    st.sampled_from(["engine", "le", "gpu", "UUID", "Hostname", "GPU_I_ID", "pod", "namespace"]),
    LABEL_VALUES,
    max_size=5,
)
VALUES = st.one_of(
    st.sampled_from(["+Inf", "-Inf", "NaN", "1e309", "9223372036854775807", "1.25", "-3", "x"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@st.composite
def exposition(draw: Any) -> str:
    """Mostly well-formed lines, with raw junk mixed in."""
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        if draw(st.booleans()):
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in draw(LABELS).items())
            lines.append(f"{draw(NAMES)}{{{labels}}} {draw(VALUES)}")
        else:
            lines.append(draw(st.text(max_size=60)))
    return "\n".join(lines)


def _finite_snapshot(snap: ServingSnapshot) -> None:
    scalars = (snap.prompt_tokens_total, snap.generation_tokens_total, snap.requests_finished_total)
    assert all(math.isfinite(v) and v >= 0 for v in scalars)
    assert snap.running >= 0 and snap.waiting >= 0
    for hist in (snap.ttft, snap.inter_token, snap.e2e):
        if hist is not None:
            assert all(math.isfinite(c) for c in hist.cumulative_counts)
            assert math.isfinite(hist.sum_s) and math.isfinite(hist.count)


@FUZZ
@given(exposition())
def test_serving_parser_raises_only_scrape_errors_and_emits_finite_values(text: str) -> None:
    try:
        scrape = parse_serving_scrape(text, 1.0)
    except ScrapeError:
        return
    _finite_snapshot(scrape.total)
    for engine in scrape.engines.values():
        _finite_snapshot(engine)


@FUZZ
@given(exposition(), st.booleans())
def test_dcgm_parser_raises_only_scrape_errors_and_keeps_fractions(
    text: str, unlabelled: bool
) -> None:
    try:
        snapshot = parse_dcgm(text, 1.0, "n", accept_unlabelled=unlabelled)
    except ScrapeError:
        return
    for gpu in snapshot.gpus.values():
        assert gpu.hostname in ("n", "") and (gpu.hostname or unlabelled)
        for part in (gpu, *gpu.instances.values()):
            for value in (part.tensor_active, part.dram_active, part.sm_active):
                assert value is None or 0.0 <= value <= 1.0
        activity = gpu.activity()
        if activity is not None:
            assert all(0.0 <= v <= 1.0 for v in (activity.tensor_active, activity.dram_active))


@FUZZ
@given(st.text(max_size=40))
def test_metrics_annotation_gives_a_port_and_a_plain_path_or_our_error(value: str) -> None:
    try:
        port, path = parse_metrics_annotation(value)
    except AnnotationError:
        return
    assert 0 < port < 65536 and path.startswith("/") and ".." not in path
    assert not set(path) & set("?#@%\\ \t\n")


@FUZZ
@given(st.text(max_size=40))
def test_gpus_annotation_raises_only_our_error(value: str) -> None:
    try:
        ids = parse_gpus_annotation(value)
    except AnnotationError:
        return
    assert ids and all(i.strip() == i and i for i in ids)


ANNOTATION_KEYS = st.sampled_from(
    [
        "triserve.io/stage",
        "triserve.io/pipeline",
        "triserve.io/metrics",
        "triserve.io/gpus",
        "triserve.io/opt-out",
    ]
)


@FUZZ
@given(
    st.dictionaries(ANNOTATION_KEYS, st.text(max_size=30), max_size=5),
    st.dictionaries(st.sampled_from(["llm-d.ai/role", "app"]), st.text(max_size=12), max_size=2),
)
def test_pod_manifest_annotations_never_raise(
    annotations: dict[str, str], labels: dict[str, str]
) -> None:
    manifest = {
        "metadata": {"name": "p", "namespace": "ns", "annotations": annotations, "labels": labels},
        "status": {"podIP": "10.0.0.1"},
    }
    errors: list[str] = []
    pod = pod_from_manifest(manifest, lambda kind, message: errors.append(message))
    if pod is not None and pod.metrics_port is not None:
        url = pod.metrics_url()
        assert url is not None and url.startswith("http://10.0.0.1:")
