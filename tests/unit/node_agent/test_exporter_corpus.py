"""Real dcgm-exporter, vLLM, SGLang and TensorRT-LLM outputs through the agent's parsers.

The files come from public threads and docs (tests/fixtures/exporters/README.md says which).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from triserve.node_agent.dcgm import ForeignScrapeError, parse_dcgm
from triserve.node_agent.serving import parse_serving_scrape

CORPUS = Path(__file__).parents[2] / "fixtures" / "exporters"


def text(name: str) -> str:
    return (CORPUS / name).read_text()


def test_every_corpus_file_is_listed_with_its_source() -> None:
    readme = text("README.md")
    files = sorted(p.name for p in CORPUS.glob("*.prom"))
    assert len(files) >= 12
    assert [f for f in files if f"`{f}`" not in readme] == []


def test_a30_mig_instances_stay_separate_and_the_gpu_has_no_folded_activity() -> None:
    snap = parse_dcgm(text("dcgm-a30-mig.prom"), 1.0, "yg-data-k8s-gpu-a30-node-test-test0003.mt")
    gpu0 = snap.gpus["GPU-265c9814-6156-355b-e589-ff2064894f16"]
    assert gpu0.mig and sorted(gpu0.instances) == ["3", "4", "5", "6"]
    assert {i.profile for i in gpu0.instances.values()} == {"1g.6gb"}
    assert gpu0.tensor_active is None and gpu0.activity() is None
    assert gpu0.instances["3"].tensor_active == 0.0


def test_a100_mig_activity_is_per_instance() -> None:
    snap = parse_dcgm(text("dcgm-a100-mig-dra.prom"), 1.0, "k8s-dra-driver-cluster-worker")
    gpu = snap.gpus["GPU-2c2f45e8-0886-e3cc-02be-a4181a13fc9b"]
    assert {k: v.gr_engine_active for k, v in gpu.instances.items()} == {
        "8": 0.029399,
        "9": 0.033893,
        "10": 0.0,
    }


def test_exporter_pod_hostname_is_rejected_unless_named() -> None:
    body = text("dcgm-titanv-k8s-labels.prom")
    with pytest.raises(ForeignScrapeError, match="dcgm-exporter-lcxpl"):
        parse_dcgm(body, 1.0, "gpu-node-7")
    snap = parse_dcgm(body, 1.0, "gpu-node-7", hostnames=frozenset({"dcgm-exporter-lcxpl"}))
    assert len(snap.gpus) == 5 and all(not g.pods for g in snap.gpus.values())


def test_error_lines_cost_only_themselves() -> None:
    # None of these families is one the agent reads; the file parses without error.
    snap = parse_dcgm(text("dcgm-error-lines.prom"), 1.0, "n", accept_unlabelled=True)
    assert snap.gpus == {}
    # Mixed with a good series, the good one survives the broken ones.
    good = 'DCGM_FI_PROF_DRAM_ACTIVE{gpu="0",UUID="GPU-a",Hostname="n"} 0.5\n'
    broken = text("dcgm-error-lines.prom").replace(
        "DCGM_FI_DEV_COMPUTE_PIDS", "DCGM_FI_PROF_DRAM_ACTIVE"
    )
    snap = parse_dcgm(broken + good, 1.0, "n")
    assert snap.gpus["GPU-a"].dram_active == 0.5 and snap.skipped_series >= 1


def test_unlabelled_exporter_needs_a_node_local_url() -> None:
    body = text("dcgm-v100-no-hostname.prom")
    with pytest.raises(ForeignScrapeError, match="no Hostname label"):
        parse_dcgm(body, 1.0, "n")
    snap = parse_dcgm(body, 1.0, "n", accept_unlabelled=True)
    assert snap.gpus["GPU-45984919-9e67-f2ec-9b84-a96fefa525ff"].dram_active == 0.0


def test_series_with_spaces_after_commas_parse() -> None:
    snap = parse_dcgm(text("dcgm-quadro-gpu-operator-service.prom"), 1.0, "node-1")
    assert snap.gpus["GPU-16355474-d5ef-9c9f-3367-6ff0eaa0e4a7"].gpu == "2"


def test_vllm_data_parallel_engines_get_their_own_snapshots() -> None:
    scrape = parse_serving_scrape(text("vllm-dp2-running.prom"), 3.0)
    assert scrape.engine_kind == "vllm" and sorted(scrape.engines) == ["0", "1"]
    ttft = parse_serving_scrape(text("vllm-dp-engine1-ttft.prom"), 3.0)
    assert ttft.engines["1"].ttft is not None and ttft.engines["1"].ttft.upper_bounds_s[0] == 0.1


def test_vllm_v0_counters_and_histogram() -> None:
    snap = parse_serving_scrape(text("vllm-v0-bloom.prom"), 1.0).total
    assert (snap.prompt_tokens_total, snap.generation_tokens_total) == (1196.0, 218152.0)
    assert snap.ttft is not None and snap.ttft.cumulative_counts[-1] == 213.0


@pytest.mark.parametrize("name", ["sglang-queue-metrics.prom", "sglang-deepseek-r1.prom"])
def test_sglang_outputs_are_recognised(name: str) -> None:
    scrape = parse_serving_scrape(text(name), 1.0)
    assert scrape.engine_kind == "sglang" and scrape.total.running == 0


def test_sglang_finished_counter_is_read() -> None:
    assert (
        parse_serving_scrape(text("sglang-deepseek-r1.prom"), 1.0).total.requests_finished_total
        == 217.0
    )


def test_trtllm_prefixed_metrics_and_the_unprefixed_ones_are_told_apart() -> None:
    trt = parse_serving_scrape(text("trtllm-dynamo-doc-example.prom"), 1.0)
    assert trt.engine_kind == "trtllm" and trt.total.requests_finished_total == 155.0
    # trtllm-serve without a prefix: known by its engine_type label; it has no queue gauges,
    # so running and waiting are unknown rather than an idle zero.
    bare = parse_serving_scrape(text("trtllm-serve-unprefixed.prom"), 1.0)
    assert bare.engine_kind == "trtllm-serve"
    assert {"running", "waiting"} <= bare.total.unknown
    assert bare.total.ttft is not None and bare.total.ttft.count == 2.0
