"""Parse a serving engine's `/metrics` text (vLLM, SGLang, TensorRT-LLM) into a snapshot.

`parse_serving(text, timestamp_s)` is what the scraper (`triserve.node_agent.scraping`) runs
on every scrape of a stage pod, and what the simulated node runs on the simulator's vLLM-format
exposition — the same parser either way. The engine is recognised by its metric prefix;
series that differ only by labels (model name, engine index, vLLM-Omni stage) are summed.
Text without any known serving metric raises `ValueError` for the caller to count and skip.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from triserve.telemetry import Histogram, ServingSnapshot


@dataclass(frozen=True, slots=True)
class EngineMetrics:
    """The metric names one serving engine uses for what triserve reads.

    Each field lists candidate names, newest first (engines renamed some across releases).
    """

    engine: str
    running: tuple[str, ...]
    waiting: tuple[str, ...]
    prompt_tokens: tuple[str, ...]
    generation_tokens: tuple[str, ...]
    finished: tuple[str, ...]
    ttft: tuple[str, ...]
    inter_token: tuple[str, ...]
    e2e: tuple[str, ...]


ENGINES: tuple[EngineMetrics, ...] = (
    EngineMetrics(
        engine="vllm",
        running=("vllm:num_requests_running",),
        waiting=("vllm:num_requests_waiting",),
        prompt_tokens=("vllm:prompt_tokens_total",),
        generation_tokens=("vllm:generation_tokens_total",),
        finished=("vllm:request_success_total",),
        ttft=("vllm:time_to_first_token_seconds",),
        inter_token=("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
        e2e=("vllm:e2e_request_latency_seconds",),
    ),
    EngineMetrics(
        engine="sglang",
        running=("sglang:num_running_reqs",),
        waiting=("sglang:num_queue_reqs",),
        prompt_tokens=("sglang:prompt_tokens_total",),
        generation_tokens=("sglang:generation_tokens_total",),
        finished=("sglang:num_requests_total",),
        ttft=("sglang:time_to_first_token_seconds",),
        inter_token=("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds"),
        e2e=("sglang:e2e_request_latency_seconds",),
    ),
    EngineMetrics(
        engine="trtllm",
        running=("trtllm_num_requests_running",),
        waiting=("trtllm_num_requests_waiting",),
        prompt_tokens=("trtllm_prompt_tokens_total",),
        generation_tokens=("trtllm_generation_tokens_total",),
        finished=("trtllm_request_success_total",),
        ttft=("trtllm_time_to_first_token_seconds",),
        inter_token=("trtllm_inter_token_latency_seconds", "trtllm_time_per_output_token_seconds"),
        e2e=("trtllm_e2e_request_latency_seconds",),
    ),
)


@dataclass(slots=True)
class _Hist:
    buckets: dict[float, float]
    sum_s: float = 0.0
    count: float = 0.0


def _samples(text: str) -> tuple[dict[str, float], dict[str, _Hist]]:
    """Scalar samples summed over label sets, and histograms merged over label sets."""
    scalars: dict[str, float] = defaultdict(float)
    hists: dict[str, _Hist] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            value = float(sample.value)
            if math.isnan(value):
                continue
            name = sample.name
            if name.endswith("_bucket") and "le" in sample.labels:
                base = name.removesuffix("_bucket")
                hist = hists.setdefault(base, _Hist({}))
                bound = float(sample.labels["le"])
                hist.buckets[bound] = hist.buckets.get(bound, 0.0) + value
            elif family.type == "histogram" and name.endswith("_sum"):
                hists.setdefault(name.removesuffix("_sum"), _Hist({})).sum_s += value
            elif family.type == "histogram" and name.endswith("_count"):
                hists.setdefault(name.removesuffix("_count"), _Hist({})).count += value
            else:
                scalars[name] += value
    return scalars, hists


def _scalar(scalars: dict[str, float], names: tuple[str, ...]) -> float | None:
    for name in names:
        if name in scalars:
            return scalars[name]
        # Counters may be exposed without `_total` by older clients.
        if name.endswith("_total") and name.removesuffix("_total") in scalars:
            return scalars[name.removesuffix("_total")]
    return None


def _histogram(hists: dict[str, _Hist], names: tuple[str, ...]) -> Histogram | None:
    for name in names:
        hist = hists.get(name)
        if hist is None or not hist.buckets:
            continue
        bounds = tuple(sorted(hist.buckets))
        return Histogram(
            upper_bounds_s=bounds,
            cumulative_counts=tuple(hist.buckets[b] for b in bounds),
            sum_s=hist.sum_s,
            count=hist.count or hist.buckets.get(math.inf, 0.0),
        )
    return None


def detect_engine(scalars: dict[str, float], hists: dict[str, _Hist]) -> EngineMetrics | None:
    """The engine whose running-requests gauge (or token counter) the text carries."""
    for engine in ENGINES:
        names = engine.running + engine.generation_tokens + engine.ttft
        if any(_scalar(scalars, (n,)) is not None or n in hists for n in names):
            return engine
    return None


def parse_serving(text: str, timestamp_s: float) -> ServingSnapshot:
    """One scrape → `ServingSnapshot`; raises ValueError when no engine's metrics are there."""
    scalars, hists = _samples(text)
    engine = detect_engine(scalars, hists)
    if engine is None:
        raise ValueError(
            "no vLLM (vllm:*), SGLang (sglang:*) or TensorRT-LLM (trtllm_*) serving metrics "
            "found; check the pod's triserve.io/metrics port/path"
        )
    e2e = _histogram(hists, engine.e2e)
    finished = _scalar(scalars, engine.finished)
    if finished is None:
        finished = e2e.count if e2e is not None else 0.0
    return ServingSnapshot(
        timestamp_s=timestamp_s,
        running=int(_scalar(scalars, engine.running) or 0),
        waiting=int(_scalar(scalars, engine.waiting) or 0),
        prompt_tokens_total=_scalar(scalars, engine.prompt_tokens) or 0.0,
        generation_tokens_total=_scalar(scalars, engine.generation_tokens) or 0.0,
        requests_finished_total=finished,
        ttft=_histogram(hists, engine.ttft),
        inter_token=_histogram(hists, engine.inter_token),
        e2e=e2e,
    )
