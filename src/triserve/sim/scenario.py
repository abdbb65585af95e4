"""Scenario files: pydantic models for the YAML under examples/scenarios/ and their loader.

Called by users and by `triserve.bench` through `triserve.sim.load_scenario(name_or_path)`,
and by `triserve.sim.simulation.Simulation`, which builds GPUs, stages and arrivals from a
`Scenario`. A scenario is data: GPUs (profile, inlet temperature, cooling), PMU parameters,
the pipeline (stages, their GPU, upstream edge, hand-off, per-token work) and the workload.

Stage work is given as *effective* per-token FLOPs and bytes, calibrated so that stage times
at low load match public vLLM-Omni observations (docs/calibration.md: thinker 2-10 s,
talker 9-30 s, code2wav 0.1-0.2 s per request); they include serving overheads, so they are
larger than a bare parameter count would suggest while keeping the arithmetic intensity.
`with_overrides` changes fields of a loaded scenario by dotted path, validated (the bench
sweeps ``pmu.idle_hold_s`` and ``telemetry.counters`` this way).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from triserve.sim.physics import fit_idle
from triserve.sim.profiles import PROFILES

__all__ = [
    "DecodeSpec",
    "GpuSpec",
    "OneshotSpec",
    "PipelineSpec",
    "PmuSpec",
    "PrefillSpec",
    "PstatedSpec",
    "Scenario",
    "ScenarioError",
    "StageSpec",
    "TelemetrySpec",
    "TokenDist",
    "WorkloadSpec",
    "bundled_scenarios_dir",
    "load_scenario",
    "with_overrides",
]


class ScenarioError(ValueError):
    """A scenario file is missing or invalid; the message names the file and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GpuSpec(_Model):
    """One GPU of the simulated node."""

    #: Required: a GPU without a model must not silently become an H100.
    profile: str
    ambient_c: float | None = None
    thermal_r_scale: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _known_profile(self) -> GpuSpec:
        if self.profile not in PROFILES:
            known = ", ".join(sorted(PROFILES))
            raise ValueError(f"unknown profile {self.profile!r}; use one of {known}")
        return self


class PstatedSpec(_Model):
    """An nvidia-pstated-style daemon beside the driver (github.com/sasha0552/nvidia-pstated).

    Every `poll_s` it reads each GPU's NVML utilisation; after `idle_polls` polls in a row at
    0% it forces the lowest performance state, and on the first poll above 0% it hands the
    state back to the driver (the daemon's defaults: 100 ms, 30 iterations). Its
    temperature rule is not modelled.
    """

    poll_s: float = Field(default=0.1, gt=0)
    idle_polls: int = Field(default=30, ge=1)


class PmuSpec(_Model):
    """Parameters of the default power-management unit and of NVML actuation.

    With `perf_boost` (the driver default) an idle GPU whose serving engine holds a CUDA
    context keeps its boost state for as long as the context lives; ``perf_boost: false``
    is ``CUDA_DISABLE_PERF_BOOST=1`` in every engine: the idle GPU holds its clock for
    `idle_hold_s`, then drops to the idle clock and the lowest performance state.
    `parked_share` is the share of the context premium (context idle minus bare idle power)
    that stays while the GPU is locked at a low clock with the context resident; it is not
    published (docs/calibration.md) and the bench sweeps it. `pstated` runs a P-state
    daemon beside the driver.
    """

    idle_hold_s: float = Field(default=1.5, ge=0)
    perf_boost: bool = True
    parked_share: float = Field(default=0.35, ge=0, le=1)
    pstated: PstatedSpec | None = None
    clock_change_latency_s: float = Field(default=0.02, ge=0)
    period_s: float = Field(default=0.25, gt=0)


class TelemetrySpec(_Model):
    """What the simulated node's counters mean and how often they are collected.

    ``counters: realistic`` (default) gives every counter its documented meaning, sampling
    window and noise (docs/calibration.md); ``counters: ideal`` keeps the older identities
    (exact per-read averages, SM activity = compute time share, DRAM activity up to 1, GPM
    on every profile, fresh DCGM values) and exists only as a named reference row.
    `dcgm_interval_s` is dcgm-exporter's collection interval (its default is 30 s) and
    `dcgm_fields` its counter file: ``default`` is dcgm-exporter's default-counters.csv
    (no SM_ACTIVE / SM_OCCUPANCY), ``profiling`` adds them and PIPE_FP32_ACTIVE.
    `util_period_s` overrides the profile's NVML utilisation sample period.
    """

    counters: Literal["realistic", "ideal"] = "realistic"
    dcgm_interval_s: float = Field(default=30.0, gt=0)
    dcgm_fields: Literal["default", "profiling"] = "default"
    util_period_s: float | None = Field(default=None, gt=0)
    noise_sd: float = Field(default=0.03, ge=0, le=0.5)


class PrefillSpec(_Model):
    """Prefill work per prompt token: effective FLOPs, arithmetic intensity, efficiency."""

    flops_per_token: float = Field(gt=0)
    ai: float = Field(default=600.0, gt=0)
    efficiency: float = Field(default=0.6, gt=0, le=1)
    tensor_share: float = Field(default=0.9, ge=0, le=1)
    # Large GEMMs launch more tiles than there are SMs but few warps per SM (big tiles).
    sm_fill: float = Field(default=0.98, gt=0, le=1)
    occupancy: float = Field(default=0.2, gt=0, le=1)
    # Prefill is compute-bound: the roofline already scales its time with 1/f.
    clock_sensitive_share: float = Field(default=0.0, ge=0, lt=1)


class DecodeSpec(_Model):
    """One decode step for a batch of b sequences: bytes = weight_bytes + b·bytes_per_seq.

    `flops_per_token` is the model's real work per generated token (2 x active parameters;
    a 3B-active MoE is about 6.6 GFLOP), `efficiency` the kernel's unconstrained share of
    peak FLOP/s, so the step's roofline stays memory-bound at every batch it serves.
    `clock_sensitive_share` is the share of a batch-1 step at the boost clock that scales
    with 1/f (docs/calibration.md, "Decode latency versus clock"): launches, synchronisation
    and sampling take about the same time per step at any batch, so at batch b the share is
    ``clock_sensitive_share · bytes(1) / bytes(b)``. `sm_fill` is the share of SMs holding a
    warp during a step of four or more sequences (smaller batches fill fewer).
    """

    weight_bytes: float = Field(gt=0)
    bytes_per_seq: float = Field(ge=0)
    flops_per_token: float = Field(gt=0)
    efficiency: float = Field(default=0.5, gt=0, le=1)
    tensor_share: float = Field(default=0.15, ge=0, le=1)
    sm_fill: float = Field(default=0.97, gt=0, le=1)
    occupancy: float = Field(default=0.5, gt=0, le=1)
    clock_sensitive_share: float = Field(default=0.03, ge=0, lt=1)

    def clock_share(self, batch: int) -> float:
        """The clock-sensitive share of a step of `batch` sequences."""
        one = self.weight_bytes + self.bytes_per_seq
        return self.clock_sensitive_share * one / (self.weight_bytes + self.bytes_per_seq * batch)


class OneshotSpec(_Model):
    """One-shot work (code2wav) per input token: effective FLOPs and arithmetic intensity."""

    flops_per_token: float = Field(gt=0)
    ai: float = Field(default=47.0, gt=0)
    efficiency: float = Field(default=0.5, gt=0, le=1)
    tensor_share: float = Field(default=0.6, ge=0, le=1)
    fixed_flops: float = Field(default=0.0, ge=0)
    sm_fill: float = Field(default=0.9, gt=0, le=1)
    occupancy: float = Field(default=0.4, gt=0, le=1)
    clock_sensitive_share: float = Field(default=0.0, ge=0, lt=1)


class StageSpec(_Model):
    """A pipeline stage: where it runs, what feeds it and what one request costs."""

    name: str
    kind: Literal["autoregressive", "oneshot"]
    gpu: int = Field(ge=0)
    upstream: str | None = None
    handoff: Literal["whole", "chunked"] = "whole"
    handoff_latency_s: float = Field(default=0.19, ge=0)
    chunk_latency_s: float = Field(default=0.005, ge=0)
    chunk_tokens: int = Field(default=25, gt=0)
    tokens_per_upstream_token: float = Field(default=1.0, gt=0)
    max_batch: int = Field(default=16, gt=0)
    prefill_tokens: Literal["input", "none"] = "input"
    prefill: PrefillSpec | None = None
    decode: DecodeSpec | None = None
    oneshot: OneshotSpec | None = None
    pod: str | None = None
    container: str | None = None

    @model_validator(mode="after")
    def _work_matches_kind(self) -> StageSpec:
        if self.kind == "autoregressive" and (self.prefill is None or self.decode is None):
            raise ValueError(f"stage {self.name!r}: autoregressive needs prefill and decode")
        if self.kind == "oneshot" and self.oneshot is None:
            raise ValueError(f"stage {self.name!r}: oneshot needs a oneshot section")
        return self


class PipelineSpec(_Model):
    """The stage graph (a chain, first stage without upstream) and its Kubernetes names."""

    name: str = "qwen3-omni"
    namespace: str = "omni"
    model_name: str = "Qwen/Qwen3-Omni-30B-A3B-Instruct"
    stages: tuple[StageSpec, ...]

    @model_validator(mode="after")
    def _chain(self) -> PipelineSpec:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        for i, s in enumerate(self.stages):
            want = None if i == 0 else self.stages[i - 1].name
            if s.upstream != want:
                raise ValueError(
                    f"stages[{i}] ({s.name}): upstream must be {want!r} (stages form a chain "
                    f"in order), got {s.upstream!r}"
                )
        return self


class TokenDist(_Model):
    """A log-normal token count given by its median and 90th percentile, clipped."""

    p50: float = Field(gt=0)
    p90: float = Field(gt=0)
    min: int = Field(default=1, ge=1)
    max: int = Field(default=8192, ge=1)


class WorkloadSpec(_Model):
    """Arrivals and request shapes."""

    arrival: Literal["poisson", "bursty", "trace"] = "poisson"
    rate_rps: float = Field(default=0.25, gt=0)
    cv: float = Field(default=13.0, gt=0)
    trace: str | None = None
    trace_time_scale: float = Field(default=1.0, gt=0)
    input_tokens: TokenDist = TokenDist(p50=1020, p90=2734, min=1, max=8192)
    output_tokens: TokenDist = TokenDist(p50=129, p90=424, min=1, max=1024)
    media_mix: dict[str, float] = Field(default_factory=lambda: {"none": 1.0})
    media_tokens: dict[str, int] = Field(
        default_factory=lambda: {"none": 0, "image": 1200, "audio": 750, "video": 4000}
    )

    @model_validator(mode="after")
    def _trace_given(self) -> WorkloadSpec:
        if self.arrival == "trace" and not self.trace:
            raise ValueError("arrival 'trace' needs workload.trace (a CSV path)")
        unknown = set(self.media_mix) - set(self.media_tokens)
        if unknown:
            raise ValueError(f"media_mix names {sorted(unknown)} missing from media_tokens")
        return self


class Scenario(_Model):
    """A whole simulated node: GPUs, PMU, pipeline and workload."""

    name: str
    description: str = ""
    duration_s: float = Field(default=600.0, gt=0)
    warmup_s: float = Field(default=60.0, ge=0)
    hostname: str = "sim-node-0"
    ambient_c: float = 25.0
    gpus: tuple[GpuSpec, ...]
    pmu: PmuSpec = Field(default_factory=PmuSpec)
    telemetry: TelemetrySpec = Field(default_factory=TelemetrySpec)
    pipeline: PipelineSpec
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    source_path: str | None = None

    @model_validator(mode="after")
    def _stages_on_gpus(self) -> Scenario:
        for gpu in self.gpus:
            try:
                fit_idle(PROFILES[gpu.profile], self.pmu.parked_share)
            except ValueError as exc:
                raise ValueError(f"{exc}; lower pmu.parked_share") from None
        for i, s in enumerate(self.pipeline.stages):
            if s.gpu >= len(self.gpus):
                raise ValueError(
                    f"pipeline.stages[{i}] ({s.name}): gpu {s.gpu} but only "
                    f"{len(self.gpus)} gpus are defined"
                )
        return self


def bundled_scenarios_dir() -> Path:
    """The bundled scenario files, shipped inside the package (`examples/scenarios` links here).

    Package data, so that `--sim reference` and `triserve demo` also work from an installed
    wheel or the container image, not only from a source checkout.
    """
    return Path(__file__).resolve().parent / "scenarios"


def _format_error(err: ValidationError, path: Path) -> str:
    lines = [f"invalid scenario file {path}:"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load a scenario by bundled name (``reference``) or by path to a YAML file.

    Raises ScenarioError naming the file and the offending field when it is invalid.
    """
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = bundled_scenarios_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ScenarioError(f"scenario {str(name_or_path)!r} not found (looked for {path})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ScenarioError(f"scenario file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ScenarioError(f"scenario file {path} must hold a mapping at top level")
    data.setdefault("name", path.stem)
    wl = data.get("workload")
    if isinstance(wl, dict) and wl.get("trace"):
        trace = Path(str(wl["trace"]))
        if not trace.is_absolute():
            trace = (path.parent / trace).resolve()
            wl["trace"] = str(trace)
        if not trace.is_file():
            # Checked here, not when the workload first reads it (in a bench worker process).
            raise ScenarioError(
                f"{path}: workload.trace: file {trace} does not exist; give a CSV path "
                "relative to the scenario file"
            )
    data["source_path"] = str(path)
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_format_error(exc, path)) from exc


def with_overrides(scenario: Scenario, overrides: dict[str, Any]) -> Scenario:
    """A copy of `scenario` with fields replaced by dotted path, validated like a file.

    ``with_overrides(sc, {"pmu.idle_hold_s": 0.25, "telemetry.counters": "ideal"})``.
    Raises ScenarioError naming the path when it does not exist or the value is invalid.
    """
    data: dict[str, Any] = scenario.model_dump(mode="json")
    for dotted, value in overrides.items():
        node: Any = data
        parts = dotted.split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, dict) and part in node:
                if last:
                    node[part] = value
                else:
                    node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            else:
                raise ScenarioError(
                    f"scenario {scenario.name!r}: override {dotted!r} names no field "
                    f"(stopped at {part!r}); use a dotted path such as 'pmu.idle_hold_s'"
                )
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        where = scenario.source_path or scenario.name
        raise ScenarioError(_format_error(exc, Path(where))) from exc
