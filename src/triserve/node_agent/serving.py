"""Parse a serving engine's `/metrics` text (vLLM, SGLang, TensorRT-LLM) into a snapshot.

`parse_serving_scrape(text, timestamp_s)` is what the scraper (`triserve.node_agent.scraping`)
runs on every scrape of a stage pod, and `parse_serving` (its pod total) what the simulated
node runs on the simulator's vLLM-format exposition — the same parser either way. The engine
is recognised by its metric prefix. Series are grouped by vLLM's data-parallel `engine`
label, so each engine of a `--data-parallel-size N` server gets its own snapshot; within an
engine, series that differ only by other labels (model name, finish reason, vLLM-Omni stage)
are summed, and a repeated series counts once.

Only the families listed in `ENGINES` are parsed (`triserve.node_agent.promtext`). A scrape
without any known serving metric, or with a non-finite or negative value in a family the
controllers read, raises `ScrapeError` (a `ValueError`) for the caller to count and skip:
the previous snapshot then ages until the controllers stop trusting it.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from triserve.node_agent.promtext import Sample, ScrapeError, read_samples
from triserve.telemetry import Histogram, ServingSnapshot

#: The label vLLM puts on every series of one data-parallel engine.
ENGINE_LABEL = "engine"
#: Gauges above this are not a real request count.
_MAX_REQUESTS = 1e7


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


def _family_names(engine: EngineMetrics) -> tuple[str, ...]:
    return (
        engine.running + engine.waiting + engine.prompt_tokens + engine.generation_tokens
        + engine.finished + engine.ttft + engine.inter_token + engine.e2e
    )  # fmt: skip


def _sample_names(families: Iterable[str]) -> frozenset[str]:
    names: set[str] = set()
    for family in families:
        base = family.removesuffix("_total")
        names |= {family, base, f"{base}_total"}
        names |= {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
    return frozenset(names)


_WANTED = _sample_names(n for engine in ENGINES for n in _family_names(engine))
_HIST_FAMILIES = frozenset(
    n for engine in ENGINES for n in engine.ttft + engine.inter_token + engine.e2e
)
#: A histogram's sample name → (family, part), e.g. ``x_bucket`` → (``x``, ``bucket``).
_HIST_PARTS: dict[str, tuple[str, str]] = {
    f"{family}_{part}": (family, part)
    for family in _HIST_FAMILIES
    for part in ("bucket", "sum", "count")
}


@dataclass(slots=True)
class _Hist:
    buckets: dict[float, float]
    sum_s: float = 0.0
    count: float = 0.0


@dataclass(slots=True)
class _Group:
    """The summed scalars and merged histograms of one engine's series."""

    scalars: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    hists: dict[str, _Hist] = field(default_factory=dict)

    def add(self, sample: Sample) -> None:
        name, value = sample.name, sample.value
        part = _HIST_PARTS.get(name)
        if part is None:
            self.scalars[name] += value
            return
        base, kind = part
        hist = self.hists.get(base)
        if hist is None:
            hist = self.hists[base] = _Hist({})
        if kind == "bucket":
            try:
                bound = float(sample.labels.get("le", "nan"))
            except ValueError:
                return
            if math.isnan(bound):
                return
            hist.buckets[bound] = hist.buckets.get(bound, 0.0) + value
        elif kind == "sum":
            hist.sum_s += value
        else:
            hist.count += value


def _scalar(scalars: Mapping[str, float], names: tuple[str, ...]) -> float | None:
    for name in names:
        if name in scalars:
            return scalars[name]
        # Counters may be exposed without `_total` by older clients.
        if name.endswith("_total") and name.removesuffix("_total") in scalars:
            return scalars[name.removesuffix("_total")]
    return None


def _histogram(hists: Mapping[str, _Hist], names: tuple[str, ...]) -> Histogram | None:
    """The first named histogram whose cumulative buckets make sense, else None."""
    for name in names:
        hist = hists.get(name)
        if hist is None or not hist.buckets:
            continue
        bounds = tuple(sorted(hist.buckets))
        counts = tuple(hist.buckets[b] for b in bounds)
        if any(b < a for a, b in itertools.pairwise(counts)) or counts[0] < 0:
            continue  # not cumulative: unusable for quantiles
        return Histogram(
            upper_bounds_s=bounds,
            cumulative_counts=counts,
            sum_s=hist.sum_s,
            count=hist.count or hist.buckets.get(math.inf, 0.0),
        )
    return None


def detect_engine(names: Iterable[str]) -> EngineMetrics | None:
    """The engine whose running-requests gauge, token counter or TTFT the names include."""
    present = frozenset(names)
    for engine in ENGINES:
        candidates = _sample_names(engine.running + engine.generation_tokens + engine.ttft)
        if present & candidates:
            return engine
    return None


@dataclass(frozen=True, slots=True)
class ServingScrape:
    """One scrape of a serving pod: the pod total and, for data-parallel servers, each engine.

    `engines` maps the `engine` label value to that engine's snapshot; it is empty when the
    series carry no engine label (one engine).
    """

    engine_kind: str
    total: ServingSnapshot
    engines: Mapping[str, ServingSnapshot]
    skipped_series: int = 0


def parse_serving_scrape(text: str, timestamp_s: float) -> ServingScrape:
    """One scrape → `ServingScrape`; raises `ScrapeError` when it cannot be trusted."""
    result = read_samples(text, lambda name: name in _WANTED)
    engine = detect_engine(s.name for s in result.samples)
    if engine is None:
        raise ScrapeError(
            "no vLLM (vllm:*), SGLang (sglang:*) or TensorRT-LLM (trtllm_*) serving metrics "
            "found; check the pod's triserve.io/metrics port/path"
        )
    if result.non_finite_names:
        raise ScrapeError(
            f"non-finite value in {', '.join(sorted(result.non_finite_names)[:3])}; "
            "the scrape is ignored"
        )
    groups: dict[str, _Group] = {}
    for sample in result.samples:
        key = sample.labels.get(ENGINE_LABEL, "")
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group()
        group.add(sample)
    if len(groups) == 1:
        total = next(iter(groups.values()))
    else:
        total = _Group()
        for sample in result.samples:
            total.add(sample)
    engines = (
        {key: _snapshot(engine, group, timestamp_s) for key, group in sorted(groups.items())}
        if len(groups) > 1 or "" not in groups
        else {}
    )
    return ServingScrape(engine.engine, _snapshot(engine, total, timestamp_s), engines,
                         result.skipped)  # fmt: skip


def parse_serving(text: str, timestamp_s: float) -> ServingSnapshot:
    """One scrape → the pod's total `ServingSnapshot` (every engine together)."""
    return parse_serving_scrape(text, timestamp_s).total


def _snapshot(engine: EngineMetrics, group: _Group, timestamp_s: float) -> ServingSnapshot:
    running = _scalar(group.scalars, engine.running) or 0.0
    waiting = _scalar(group.scalars, engine.waiting) or 0.0
    for what, value in (("running", running), ("waiting", waiting)):
        if not 0 <= value <= _MAX_REQUESTS:
            raise ScrapeError(f"{engine.engine} {what} requests = {value!r} is not a count")
    counters = {
        "prompt": _scalar(group.scalars, engine.prompt_tokens) or 0.0,
        "generation": _scalar(group.scalars, engine.generation_tokens) or 0.0,
    }
    if any(v < 0 for v in counters.values()):
        raise ScrapeError(f"{engine.engine} token counters are negative: {counters}")
    e2e = _histogram(group.hists, engine.e2e)
    finished = _scalar(group.scalars, engine.finished)
    if finished is None:
        finished = e2e.count if e2e is not None else 0.0
    return ServingSnapshot(
        timestamp_s=timestamp_s,
        running=int(running),
        waiting=int(waiting),
        prompt_tokens_total=counters["prompt"],
        generation_tokens_total=counters["generation"],
        requests_finished_total=max(finished, 0.0),
        ttft=_histogram(group.hists, engine.ttft),
        inter_token=_histogram(group.hists, engine.inter_token),
        e2e=e2e,
    )
