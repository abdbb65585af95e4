"""Parse a serving engine's `/metrics` text into snapshots, one per engine / rank / stage unit.

`parse_serving_scrape(text, timestamp_s)` is what the scraper (`triserve.node_agent.scraping`)
runs on every scrape of a stage pod, what `triserve explain-metrics` runs on a saved body, and
`parse_serving` (its pod total) what the simulated node runs on the simulator's vLLM-format
exposition: the same parser every time. The engine is recognised by its metric names
(`ENGINES`; the matrix in docs/serving-pods.md says what each one exports):

- vLLM (``vllm:``), also under Ray Serve LLM (``ray_vllm:``, and ``ray_vllm_`` where vLLM's Ray
  stat logger replaces the colon, as OpenTelemetry requires) and vLLM-Omni;
- SGLang (``sglang:`` and the ``sglang_`` spelling some deployments re-export);
- TensorRT-LLM: ``trtllm_`` (trtllm-serve, Dynamo), ``pytrtllm:``, and trtllm-serve builds
  with no prefix at all (recognised by the ``engine_type`` label on every series);
- Triton Inference Server (``nv_inference_*``; with the TensorRT-LLM backend also
  ``nv_trt_llm_request_metrics{request_type=…}``);
- Hugging Face TGI (``tgi_*``).

Series are grouped into **units** by the first label of `UNIT_LABELS` that the scrape carries:
vLLM-Omni's ``stage`` / ``stage_id``, SGLang's ``dp_rank``, vLLM's data-parallel ``engine``.
Each unit gets its own snapshot (the agent gives unit i of N to the i-th share of the pod's
GPUs); within a unit, series that differ only by other labels (model, finish reason, TP rank)
are summed, and a repeated series counts once.

A signal the engine does not export is *unknown*, never zero: it is listed in the snapshot's
`unknown` and the phase logic falls back to the GPU's counters. On a disaggregated decode
worker vLLM's ``prompt_tokens_total`` also counts prompt tokens that arrived by KV transfer or
from the prefix cache; where ``prompt_tokens_by_source_total`` exists, only its
``local_compute`` part is the engine's own prefill work, and ``external_kv_transfer`` is kept
apart (`ServingSnapshot.kv_transfer_tokens_total`).

A scrape without any known serving metric, or with a non-finite or negative value in a family
the controllers read, raises `ScrapeError` (a `ValueError`) for the caller to count and skip:
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

#: Labels that name one unit of a pod, in the order they are tried.
UNIT_LABELS = ("stage", "stage_id", "dp_rank", "engine")
#: vLLM's data-parallel engine label (kept for callers that name it).
ENGINE_LABEL = "engine"
#: Gauges above this are not a real request count.
_MAX_REQUESTS = 1e7
#: Labels a series spec may select on (``name{label=value}``).
_SELECTOR_LABELS = ("source", "request_type")


@dataclass(frozen=True, slots=True)
class EngineMetrics:
    """The metric names one serving engine uses for what triserve reads.

    Each field lists candidate series, preferred first (engines renamed some across
    releases); a candidate may select one label value, as ``name{label=value}``.
    `needs_label` marks engines whose names are too generic to recognise alone: a series
    must also carry that label.
    """

    engine: str
    running: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()
    prompt_tokens: tuple[str, ...] = ()
    generation_tokens: tuple[str, ...] = ()
    finished: tuple[str, ...] = ()
    ttft: tuple[str, ...] = ()
    inter_token: tuple[str, ...] = ()
    e2e: tuple[str, ...] = ()
    local_prompt_tokens: tuple[str, ...] = ()
    kv_transfer_tokens: tuple[str, ...] = ()
    prefill_running: tuple[str, ...] = ()
    needs_label: str = ""

    def scalars(self) -> tuple[str, ...]:
        """Every scalar series spec this engine reads."""
        return (
            self.running
            + self.waiting
            + self.prompt_tokens
            + self.generation_tokens
            + self.finished
            + self.local_prompt_tokens
            + self.kv_transfer_tokens
            + self.prefill_running
        )

    def histograms(self) -> tuple[str, ...]:
        """Every histogram family this engine reads."""
        return self.ttft + self.inter_token + self.e2e


def _vllm_like(engine: str, prefix: str) -> EngineMetrics:
    return EngineMetrics(
        engine=engine,
        running=(f"{prefix}num_requests_running",),
        waiting=(f"{prefix}num_requests_waiting",),
        prompt_tokens=(f"{prefix}prompt_tokens_total",),
        generation_tokens=(f"{prefix}generation_tokens_total",),
        finished=(f"{prefix}request_success_total",),
        ttft=(f"{prefix}time_to_first_token_seconds",),
        inter_token=(
            f"{prefix}inter_token_latency_seconds",
            f"{prefix}time_per_output_token_seconds",
        ),
        e2e=(f"{prefix}e2e_request_latency_seconds",),
        local_prompt_tokens=(f"{prefix}prompt_tokens_by_source_total{{source=local_compute}}",),
        kv_transfer_tokens=(
            f"{prefix}prompt_tokens_by_source_total{{source=external_kv_transfer}}",
        ),
    )


def _either(engine: str, *variants: EngineMetrics) -> EngineMetrics:
    """One engine read under several spellings: each field's candidates, in variant order."""

    def cat(name: str) -> tuple[str, ...]:
        return tuple(spec for v in variants for spec in getattr(v, name))

    return EngineMetrics(
        engine=engine,
        running=cat("running"),
        waiting=cat("waiting"),
        prompt_tokens=cat("prompt_tokens"),
        generation_tokens=cat("generation_tokens"),
        finished=cat("finished"),
        ttft=cat("ttft"),
        inter_token=cat("inter_token"),
        e2e=cat("e2e"),
        local_prompt_tokens=cat("local_prompt_tokens"),
        kv_transfer_tokens=cat("kv_transfer_tokens"),
        prefill_running=cat("prefill_running"),
    )


def _sglang() -> EngineMetrics:
    def both(name: str) -> tuple[str, ...]:
        return (f"sglang:{name}", f"sglang_{name}")

    return EngineMetrics(
        engine="sglang",
        running=both("num_running_reqs"),
        waiting=both("num_queue_reqs"),
        prompt_tokens=both("prompt_tokens_total"),
        generation_tokens=both("generation_tokens_total"),
        finished=both("num_requests_total"),
        ttft=both("time_to_first_token_seconds"),
        inter_token=both("inter_token_latency_seconds") + both("time_per_output_token_seconds"),
        e2e=both("e2e_request_latency_seconds"),
    )


ENGINES: tuple[EngineMetrics, ...] = (
    _vllm_like("vllm", "vllm:"),
    # vLLM's Ray stat logger (vllm/v1/metrics/ray_wrappers.py) turns `vllm:x` into `vllm_x`,
    # which Ray's metrics agent exports as `ray_vllm_x`; older releases kept the colon.
    _either("ray-vllm", _vllm_like("", "ray_vllm:"), _vllm_like("", "ray_vllm_")),
    _sglang(),
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
    EngineMetrics(
        engine="pytrtllm",
        running=("pytrtllm:num_requests_running",),
        waiting=("pytrtllm:num_requests_waiting",),
        prompt_tokens=("pytrtllm:prompt_tokens_total",),
        generation_tokens=("pytrtllm:generation_tokens_total",),
        finished=("pytrtllm:request_completed_total", "pytrtllm:request_success_total"),
    ),
    EngineMetrics(
        engine="triton",
        running=("nv_trt_llm_request_metrics{request_type=active}",),
        waiting=(
            "nv_trt_llm_request_metrics{request_type=waiting}",
            "nv_inference_pending_request_count",
        ),
        prefill_running=("nv_trt_llm_request_metrics{request_type=context}",),
        finished=("nv_inference_request_success",),
    ),
    EngineMetrics(
        engine="tgi",
        running=("tgi_batch_current_size",),
        waiting=("tgi_queue_size",),
        finished=("tgi_request_success",),
        inter_token=("tgi_request_mean_time_per_token_duration",),
        e2e=("tgi_request_duration",),
    ),
    EngineMetrics(
        engine="trtllm-serve",
        finished=("request_success_total",),
        ttft=("time_to_first_token_seconds",),
        inter_token=("time_per_output_token_seconds",),
        e2e=("e2e_request_latency_seconds",),
        needs_label="engine_type",
    ),
)


def _base_name(spec: str) -> str:
    return spec.split("{", 1)[0]


def _sample_names(families: Iterable[str]) -> frozenset[str]:
    names: set[str] = set()
    for spec in families:
        family = _base_name(spec)
        base = family.removesuffix("_total")
        names |= {family, base, f"{base}_total"}
        names |= {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
    return frozenset(names)


def _all_specs(engine: EngineMetrics) -> tuple[str, ...]:
    return engine.scalars() + engine.histograms()


_WANTED = _sample_names(s for engine in ENGINES for s in _all_specs(engine))
_HIST_FAMILIES = frozenset(n for engine in ENGINES for n in engine.histograms())
#: A histogram's sample name → (family, part), e.g. ``x_bucket`` → (``x``, ``bucket``).
_HIST_PARTS: dict[str, tuple[str, str]] = {
    f"{family}_{part}": (family, part)
    for family in _HIST_FAMILIES
    for part in ("bucket", "sum", "count")
}


def wanted_name(name: str) -> bool:
    """True for a metric name some engine's parser reads (the rest is not parsed)."""
    return name in _WANTED


@dataclass(slots=True)
class _Hist:
    buckets: dict[float, float]
    sum_s: float = 0.0
    count: float = 0.0


@dataclass(slots=True)
class _Group:
    """The summed scalars and merged histograms of one unit's series."""

    scalars: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    hists: dict[str, _Hist] = field(default_factory=dict)

    def add(self, sample: Sample) -> None:
        name, value = sample.name, sample.value
        part = _HIST_PARTS.get(name)
        if part is None:
            self.scalars[name] += value
            for key in _SELECTOR_LABELS:
                selected = sample.labels.get(key)
                if selected is not None:
                    self.scalars[f"{name}{{{key}={selected}}}"] += value
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


def _scalar(scalars: Mapping[str, float], specs: tuple[str, ...]) -> float | None:
    for spec in specs:
        if spec in scalars:
            return scalars[spec]
        # Counters may be exposed without `_total` (older clients) or with it (newer).
        name, _, selector = spec.partition("{")
        for alt in (name.removesuffix("_total"), f"{name}_total"):
            key = f"{alt}{{{selector}" if selector else alt
            if alt != name and key in scalars:
                return scalars[key]
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
            # Without `_count` and `+Inf` (a trimmed body), the top bucket holds them all.
            count=hist.count or hist.buckets.get(math.inf, counts[-1]),
        )
    return None


def detect_engine(samples: Iterable[Sample]) -> EngineMetrics | None:
    """The first engine of `ENGINES` that exports any series the scrape holds."""
    found = list(samples)
    for engine in ENGINES:
        candidates = _sample_names(_all_specs(engine))
        if any(
            s.name in candidates and (not engine.needs_label or engine.needs_label in s.labels)
            for s in found
        ):
            return engine
    return None


@dataclass(frozen=True, slots=True)
class ServingScrape:
    """One scrape of a serving pod: the pod total and, for multi-unit pods, each unit.

    `engines` maps the unit label's value (`unit_label`: ``engine``, ``dp_rank``,
    ``stage``, …) to that unit's snapshot; it is empty when the series carry no unit label
    (one engine). `ignored_names` are the metric names of the body that no engine's
    parser reads.
    """

    engine_kind: str
    total: ServingSnapshot
    engines: Mapping[str, ServingSnapshot]
    skipped_series: int = 0
    unit_label: str = ""
    ignored_names: frozenset[str] = frozenset()


def _unit_label(samples: list[Sample]) -> str:
    """The first of `UNIT_LABELS` with two values; else the first present at all; else ""."""
    present = ""
    for label in UNIT_LABELS:
        values = {s.labels[label] for s in samples if label in s.labels}
        if len(values) >= 2:
            return label
        if values and not present:
            present = label
    return present


def parse_serving_scrape(text: str, timestamp_s: float) -> ServingScrape:
    """One scrape → `ServingScrape`; raises `ScrapeError` when it cannot be trusted."""
    result = read_samples(text, wanted_name)
    engine = detect_engine(result.samples)
    if engine is None:
        raise ScrapeError(
            "no serving metrics found (vLLM vllm:*, Ray Serve ray_vllm:*/ray_vllm_*, "
            "SGLang sglang:*, TensorRT-LLM trtllm_*/pytrtllm:*, Triton nv_inference_*, TGI "
            "tgi_*); check the pod's triserve.io/metrics port/path, or run "
            "`triserve explain-metrics` on it"
        )
    if result.non_finite_names:
        raise ScrapeError(
            f"non-finite value in {', '.join(sorted(result.non_finite_names)[:3])}; "
            "the scrape is ignored"
        )
    label = _unit_label(result.samples)
    total = _Group()
    groups: dict[str, _Group] = {}
    for sample in result.samples:
        total.add(sample)
        key = sample.labels.get(label) if label else None
        if key is not None:
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group()
            group.add(sample)
    units = {key: _snapshot(engine, g, timestamp_s) for key, g in sorted(groups.items())}
    return ServingScrape(
        engine.engine,
        _snapshot(engine, total, timestamp_s),
        units,
        result.skipped,
        label,
        frozenset(result.ignored_names),
    )


def parse_serving(text: str, timestamp_s: float) -> ServingSnapshot:
    """One scrape → the pod's total `ServingSnapshot` (every unit together)."""
    return parse_serving_scrape(text, timestamp_s).total


def _snapshot(engine: EngineMetrics, group: _Group, timestamp_s: float) -> ServingSnapshot:
    unknown: set[str] = set()

    def read(signal: str, specs: tuple[str, ...]) -> float:
        value = _scalar(group.scalars, specs)
        if value is None:
            unknown.add(signal)
            return 0.0
        return value

    running = read("running", engine.running)
    waiting = read("waiting", engine.waiting)
    prefill = _scalar(group.scalars, engine.prefill_running)
    for what, value in (("running", running), ("waiting", waiting), ("prefill", prefill or 0)):
        if not 0 <= value <= _MAX_REQUESTS:
            raise ScrapeError(f"{engine.engine} {what} requests = {value!r} is not a count")
    local = _scalar(group.scalars, engine.local_prompt_tokens)
    prompt = local if local is not None else read("prompt_tokens", engine.prompt_tokens)
    kv_transfer = _scalar(group.scalars, engine.kv_transfer_tokens)
    counters = {
        "prompt": prompt,
        "generation": read("generation_tokens", engine.generation_tokens),
        "kv_transfer": kv_transfer or 0.0,
    }
    if any(v < 0 for v in counters.values()):
        raise ScrapeError(f"{engine.engine} token counters are negative: {counters}")
    e2e = _histogram(group.hists, engine.e2e)
    finished = _scalar(group.scalars, engine.finished)
    if finished is None:
        if e2e is not None:
            finished = e2e.count
        else:
            unknown.add("requests_finished")
            finished = 0.0
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
        unknown=frozenset(unknown),
        kv_transfer_tokens_total=kv_transfer,
        prefill_running=None if prefill is None else int(prefill),
    )
