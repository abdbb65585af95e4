"""Serving metrics of simulated stages, and Prometheus text in vLLM and dcgm-exporter format.

`StageMetrics` is updated by `triserve.sim.engines` as requests move through a stage;
`triserve.sim.simulation.Simulation` turns it into `triserve.telemetry.ServingSnapshot`s
(`serving_snapshot`) and exposition text (`serving_exposition`, `dcgm_exposition`) so the
node agent's parsers and the controllers see exactly what a real scrape would return.
Bucket bounds are vLLM's (v1 engine) for TTFT, inter-token and end-to-end latency.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from triserve.sim.backend import DcgmValues
from triserve.telemetry import Histogram, ServingSnapshot

__all__ = [
    "E2E_BUCKETS_S",
    "ITL_BUCKETS_S",
    "TTFT_BUCKETS_S",
    "DcgmRow",
    "HistogramAccumulator",
    "StageMetrics",
    "render_dcgm",
    "render_vllm",
]

TTFT_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS_S: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
E2E_BUCKETS_S: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


class HistogramAccumulator:
    """A cumulative histogram with fixed upper bounds (the +Inf bucket is implicit)."""

    __slots__ = ("bounds_s", "counts", "sum_s", "total")

    def __init__(self, bounds_s: tuple[float, ...]) -> None:
        self.bounds_s = bounds_s
        self.counts = [0.0] * (len(bounds_s) + 1)
        self.sum_s = 0.0
        self.total = 0.0

    def observe(self, value_s: float, weight: float = 1.0) -> None:
        """Add `weight` observations of `value_s` (fluid decode adds fractional tokens)."""
        self.counts[bisect.bisect_left(self.bounds_s, value_s)] += weight
        self.sum_s += value_s * weight
        self.total += weight

    def snapshot(self) -> Histogram:
        """The histogram as cumulative buckets, ending with +Inf."""
        cum, running = [], 0.0
        for c in self.counts:
            running += c
            cum.append(running)
        return Histogram((*self.bounds_s, float("inf")), tuple(cum), self.sum_s, self.total)


@dataclass(slots=True)
class StageMetrics:
    """Cumulative serving counters of one stage, as its engine's /metrics would show."""

    running: int = 0
    waiting: int = 0
    prompt_tokens_total: float = 0.0
    generation_tokens_total: float = 0.0
    requests_finished_total: float = 0.0
    ttft: HistogramAccumulator = field(default_factory=lambda: HistogramAccumulator(TTFT_BUCKETS_S))
    itl: HistogramAccumulator = field(default_factory=lambda: HistogramAccumulator(ITL_BUCKETS_S))
    e2e: HistogramAccumulator = field(default_factory=lambda: HistogramAccumulator(E2E_BUCKETS_S))

    def snapshot(self, now_s: float) -> ServingSnapshot:
        """A `ServingSnapshot` taken at `now_s`."""
        return ServingSnapshot(
            timestamp_s=now_s,
            running=self.running,
            waiting=self.waiting,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            requests_finished_total=self.requests_finished_total,
            ttft=self.ttft.snapshot(),
            inter_token=self.itl.snapshot(),
            e2e=self.e2e.snapshot(),
        )


@functools.lru_cache(maxsize=4096)
def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    """A label block; memoised, as every scrape repeats the same few (bucket bounds too)."""

    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in pairs) + "}"


def _fmt(v: float) -> str:
    if v == float("inf"):
        return "+Inf"
    return repr(float(v)) if not float(v).is_integer() else f"{v:.1f}"


def render_vllm(snap: ServingSnapshot, model_name: str, engine: str = "0") -> str:
    """vLLM-format exposition of one stage (names as in vLLM's /metrics)."""
    base = (("model_name", model_name), ("engine", engine))
    lab = _labels(base)
    out = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{lab} {_fmt(snap.running)}",
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{lab} {_fmt(snap.waiting)}",
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter",
        f"vllm:prompt_tokens_total{lab} {_fmt(snap.prompt_tokens_total)}",
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
        "# TYPE vllm:generation_tokens_total counter",
        f"vllm:generation_tokens_total{lab} {_fmt(snap.generation_tokens_total)}",
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
        f"vllm:request_success_total{_labels((*base, ('finished_reason', 'stop')))} "
        f"{_fmt(snap.requests_finished_total)}",
    ]
    hists = (
        ("vllm:time_to_first_token_seconds", "Histogram of time to first token.", snap.ttft),
        ("vllm:inter_token_latency_seconds", "Histogram of inter-token latency.", snap.inter_token),
        ("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency.", snap.e2e),
    )
    for name, help_text, h in hists:
        if h is None:
            continue
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        for bound, cum in zip(h.upper_bounds_s, h.cumulative_counts, strict=True):
            out.append(f"{name}_bucket{_labels((*base, ('le', _fmt(bound))))} {_fmt(cum)}")
        out.append(f"{name}_sum{lab} {_fmt(h.sum_s)}")
        out.append(f"{name}_count{lab} {_fmt(h.count)}")
    return "\n".join(out) + "\n"


@dataclass(frozen=True, slots=True)
class DcgmRow:
    """One GPU's labels and the values dcgm-exporter last collected for it."""

    labels: tuple[tuple[str, str], ...]
    values: DcgmValues


# (field, type, help, DcgmValues attribute, scale to the exported unit). Activity fields are
# ratios in [0, 1], as dcgm-exporter exports DCGM_FI_PROF_* fields.
_DCGM_DEFAULT: tuple[tuple[str, str, str, str], ...] = (
    ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).", "sm_clock_mhz"),
    ("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock frequency (in MHz).", "mem_clock_mhz"),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", "temperature_c"),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", "power_w"),
    (
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "counter",
        "Total energy consumption since boot (in mJ).",
        "energy_mj",
    ),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", "util_pct"),
    (
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        "gauge",
        "Ratio of time the graphics engine is active.",
        "gr_engine_active",
    ),
    (
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
        "gauge",
        "Ratio of cycles the tensor (HMMA) pipe is active.",
        "tensor_active",
    ),
    (
        "DCGM_FI_PROF_DRAM_ACTIVE",
        "gauge",
        "Ratio of cycles the device memory interface is active sending or receiving data.",
        "dram_active",
    ),
)
# dcgm-exporter's default counter file leaves these commented out.
_DCGM_PROFILING: tuple[tuple[str, str, str, str], ...] = (
    (
        "DCGM_FI_PROF_SM_ACTIVE",
        "gauge",
        "The ratio of cycles an SM has at least 1 warp assigned.",
        "sm_active",
    ),
    (
        "DCGM_FI_PROF_SM_OCCUPANCY",
        "gauge",
        "The ratio of number of warps resident on an SM.",
        "sm_occupancy",
    ),
    (
        "DCGM_FI_PROF_PIPE_FP32_ACTIVE",
        "gauge",
        "Ratio of cycles the fp32 pipes are active.",
        "fp32_active",
    ),
)
_INTEGER_FIELDS = {"sm_clock_mhz", "mem_clock_mhz", "energy_mj", "util_pct"}


def render_dcgm(rows: Sequence[DcgmRow], *, profiling: bool = False) -> str:
    """dcgm-exporter-format exposition for every GPU row.

    The default field set is dcgm-exporter's default-counters.csv; `profiling` adds the
    SM activity, SM occupancy and FP32 pipe fields a user must enable there.
    """
    fields = _DCGM_DEFAULT + (_DCGM_PROFILING if profiling else ())
    out: list[str] = []
    for name, mtype, help_text, attr in fields:
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} {mtype}"]
        for row in rows:
            value = float(getattr(row.values, attr))
            shown = f"{value:.0f}" if attr in _INTEGER_FIELDS else f"{value:.6g}"
            out.append(f"{name}{_labels(row.labels)} {shown}")
    return "\n".join(out) + "\n"
