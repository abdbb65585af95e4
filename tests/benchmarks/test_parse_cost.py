"""Parse cost of a 64 KB dcgm-exporter dump and a 64 KB vLLM exposition (reported, not asserted).

The dumps are built from lines of the real corpus (tests/fixtures/exporters/): the MIG A100
series repeated over 8 GPUs with many non-activity families around them, and a data-parallel
vLLM exposition with histograms. With benchmarks disabled (the default addopts) each test
still measures once and prints the figure. Print them with `make perf`, or alone with:

    .venv/bin/pytest tests/benchmarks/test_parse_cost.py -s -q
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from triserve.node_agent.dcgm import parse_dcgm
from triserve.node_agent.serving import parse_serving_scrape

CORPUS = Path(__file__).parents[1] / "fixtures" / "exporters"
TARGET_BYTES = 64 * 1024
HOST = "k8s-dra-driver-cluster-worker"


def dcgm_dump() -> str:
    """~64 KB: the corpus's MIG lines over 8 GPUs, plus unused families the parser skips."""
    base = [
        line
        for line in (CORPUS / "dcgm-a100-mig-dra.prom").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    lines: list[str] = []
    gpu = 0
    while sum(len(line) + 1 for line in lines) < TARGET_BYTES:
        for family in ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "DCGM_FI_PROF_DRAM_ACTIVE",
                       "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_POWER_USAGE"):  # fmt: skip
            for line in base:
                lines.append(
                    line.replace("DCGM_FI_PROF_GR_ENGINE_ACTIVE", family)
                    .replace('gpu="0"', f'gpu="{gpu % 8}"')
                    .replace("GPU-2c2f45e8", f"GPU-{gpu:08x}")
                )
        gpu += 1
    return "\n".join(lines) + "\n"


def vllm_dump() -> str:
    """~64 KB: two data-parallel engines with counters and TTFT / e2e histograms."""
    lines: list[str] = []
    model = 0
    while sum(len(line) + 1 for line in lines) < TARGET_BYTES:
        for engine in ("0", "1"):
            labels = f'engine="{engine}",model_name="/models/m{model}"'
            lines.append(f"vllm:num_requests_running{{{labels}}} 3")
            lines.append(f"vllm:generation_tokens_total{{{labels}}} 1234")
            for family in ("time_to_first_token_seconds", "e2e_request_latency_seconds"):
                for i, le in enumerate(("0.1", "0.5", "1.0", "5.0", "+Inf")):
                    lines.append(f'vllm:{family}_bucket{{{labels},le="{le}"}} {i + 1}')
                lines.append(f"vllm:{family}_count{{{labels}}} 5")
                lines.append(f"vllm:{family}_sum{{{labels}}} 2.5")
        model += 1
    return "\n".join(lines) + "\n"


def _ms_per_parse(parse: Any, text: str, rounds: int = 50) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        parse(text)
    return (time.perf_counter() - started) / rounds * 1000.0


def test_dcgm_64kb_parse_cost(benchmark: Any) -> None:
    text = dcgm_dump()
    snapshot = parse_dcgm(text, 0.0, HOST)
    assert len(snapshot.gpus) >= 8
    ms = benchmark.pedantic(
        _ms_per_parse, args=(lambda t: parse_dcgm(t, 0.0, HOST), text), rounds=1, iterations=1
    )
    print(f"\ndcgm-exporter dump of {len(text) / 1024:.0f} KB: {ms:.2f} ms per parse")


def test_vllm_64kb_parse_cost(benchmark: Any) -> None:
    text = vllm_dump()
    assert sorted(parse_serving_scrape(text, 0.0).engines) == ["0", "1"]
    ms = benchmark.pedantic(
        _ms_per_parse, args=(lambda t: parse_serving_scrape(t, 0.0), text), rounds=1, iterations=1
    )
    print(f"\nvLLM exposition of {len(text) / 1024:.0f} KB: {ms:.2f} ms per parse")
