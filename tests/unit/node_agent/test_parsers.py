# ruff: noqa: E501  (dcgm-exporter sample lines are long by nature)
"""Serving and dcgm-exporter text parsing, including the simulator's own exposition."""

from __future__ import annotations

import pytest

from triserve.node_agent.dcgm import ForeignScrapeError, parse_dcgm
from triserve.node_agent.serving import parse_serving
from triserve.simnode.node import open_simulation

VLLM = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m",engine="0"} 3
vllm:num_requests_running{model_name="m",engine="1"} 1
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 2
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{model_name="m"} 1500
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{model_name="m"} 9000
# TYPE vllm:request_success counter
vllm:request_success_total{model_name="m",finished_reason="stop"} 7
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="1.0"} 2
vllm:e2e_request_latency_seconds_bucket{le="5.0"} 6
vllm:e2e_request_latency_seconds_bucket{le="+Inf"} 7
vllm:e2e_request_latency_seconds_sum 20.5
vllm:e2e_request_latency_seconds_count 7
"""

SGLANG = """\
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="m"} 4
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="m"} 1
# TYPE sglang:generation_tokens counter
sglang:generation_tokens_total{model_name="m"} 42
"""

TRTLLM = """\
# TYPE trtllm_num_requests_running gauge
trtllm_num_requests_running 2
# TYPE trtllm_generation_tokens counter
trtllm_generation_tokens_total 77
"""


def test_vllm_pod_total_sums_label_sets_and_keeps_histograms() -> None:
    snap = parse_serving(VLLM, 12.0)
    assert (snap.running, snap.waiting) == (4, 2)
    assert (snap.generation_tokens_total, snap.prompt_tokens_total) == (1500.0, 9000.0)
    assert snap.requests_finished_total == 7.0
    assert snap.e2e is not None and snap.e2e.count == 7 and snap.e2e.sum_s == 20.5
    assert snap.timestamp_s == 12.0


def test_sglang_and_tensorrt_llm_names_are_recognised() -> None:
    sg = parse_serving(SGLANG, 0.0)
    assert (sg.running, sg.waiting, sg.generation_tokens_total) == (4, 1, 42.0)
    trt = parse_serving(TRTLLM, 0.0)
    assert (trt.running, trt.generation_tokens_total) == (2, 77.0)


@pytest.mark.parametrize("text", ["", "garbage_metric 1\n", "node_cpu_seconds_total 3\n"])
def test_text_without_serving_metrics_is_an_error_the_caller_can_skip(text: str) -> None:
    with pytest.raises(ValueError, match=r"no serving metrics|no samples"):
        parse_serving(text, 0.0)


def test_simulator_exposition_round_trips_to_its_snapshot() -> None:
    sim = open_simulation("reference")
    sim.run_until(90.0)
    for placement in sim.placements:
        parsed = parse_serving(sim.serving_exposition(placement.stage), sim.now_s)
        direct = sim.serving_snapshot(placement.stage)
        assert parsed.running == direct.running
        assert parsed.generation_tokens_total == pytest.approx(direct.generation_tokens_total)


DCGM = """\
# TYPE DCGM_FI_PROF_PIPE_TENSOR_ACTIVE gauge
DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{gpu="0",UUID="GPU-aaa",Hostname="node-1",pod="thinker-0",namespace="omni",container="engine"} 0.42
DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{gpu="1",UUID="GPU-bbb",Hostname="node-1"} 0.10
# TYPE DCGM_FI_PROF_DRAM_ACTIVE gauge
DCGM_FI_PROF_DRAM_ACTIVE{gpu="0",UUID="GPU-aaa",Hostname="node-1",pod="thinker-0",namespace="omni",container="engine"} 0.80
# TYPE DCGM_FI_DEV_SM_CLOCK gauge
DCGM_FI_DEV_SM_CLOCK{gpu="1",UUID="GPU-bbb",hostname="node-1",pod_name="talker-0",pod_namespace="omni",container_name="engine"} 1980
DCGM_FI_DEV_SM_CLOCK{gpu="0",UUID="GPU-zzz",Hostname="node-2",pod="other",namespace="x",container="c"} 1980
"""


def test_dcgm_reads_both_host_labels_and_old_pod_labels_and_filters_other_nodes() -> None:
    snap = parse_dcgm(DCGM, 1.0, node_name="node-1")
    aaa, bbb = snap.gpus["GPU-aaa"], snap.gpus["GPU-bbb"]
    assert ("omni", "thinker-0", "engine") in aaa.pods
    assert ("omni", "talker-0", "engine") in bbb.pods  # pod_name / pod_namespace
    assert "GPU-zzz" not in snap.gpus
    activity = aaa.activity()
    assert activity is not None and activity.tensor_active == 0.42
    assert bbb.activity() is None  # no DRAM activity exported for it
    assert snap.for_gpu(0, "GPU-unknown") is None  # an index never stands in for a UUID


def test_dcgm_without_a_matching_host_is_rejected_not_kept() -> None:
    with pytest.raises(ForeignScrapeError, match="not node dcgm-exporter-pod-xyz"):
        parse_dcgm(DCGM, 1.0, node_name="dcgm-exporter-pod-xyz")
    # dcgm-exporter without NODE_NAME labels hosts with its pod name: accepted on request.
    snap = parse_dcgm(DCGM, 1.0, node_name="n", hostnames=frozenset({"node-2"}))
    assert set(snap.gpus) == {"GPU-zzz"}
