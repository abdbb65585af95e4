"""Scenario files: pydantic models for the YAML under examples/scenarios/ and their loader.

Called by users and by `triserve.bench` through `triserve.sim.load_scenario(name_or_path)`,
and by `triserve.sim.simulation.Simulation`, which builds GPUs, stages and arrivals from a
`Scenario`. A scenario is data: GPUs (profile, inlet temperature, cooling), PMU parameters,
the pipeline (stages, their GPU, upstream edge, hand-off, per-token work) and the workload.

Stage work is given as *effective* per-token FLOPs and bytes, calibrated so that stage times
at low load match the vLLM-Omni observations in reference/calibration.md (thinker 2-10 s,
talker 9-30 s, code2wav 0.1-0.2 s per request); they include serving overheads, so they are
larger than a bare parameter count would suggest while keeping the arithmetic intensity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from triserve.sim.profiles import PROFILES

__all__ = [
    "DecodeSpec",
    "GpuSpec",
    "OneshotSpec",
    "PipelineSpec",
    "PmuSpec",
    "PrefillSpec",
    "Scenario",
    "ScenarioError",
    "StageSpec",
    "TokenDist",
    "WorkloadSpec",
    "bundled_scenarios_dir",
    "load_scenario",
]


class ScenarioError(ValueError):
    """A scenario file is missing or invalid; the message names the file and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GpuSpec(_Model):
    """One GPU of the simulated node."""

    profile: str = "h100-sxm"
    ambient_c: float | None = None
    thermal_r_scale: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _known_profile(self) -> GpuSpec:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; known: {sorted(PROFILES)}")
        return self


class PmuSpec(_Model):
    """Parameters of the default power-management unit and of NVML actuation."""

    idle_hold_s: float = Field(default=1.5, ge=0)
    clock_change_latency_s: float = Field(default=0.02, ge=0)
    period_s: float = Field(default=0.25, gt=0)


class PrefillSpec(_Model):
    """Prefill work per prompt token: effective FLOPs, arithmetic intensity, efficiency."""

    flops_per_token: float = Field(gt=0)
    ai: float = Field(default=600.0, gt=0)
    efficiency: float = Field(default=0.6, gt=0, le=1)
    tensor_share: float = Field(default=0.9, ge=0, le=1)


class DecodeSpec(_Model):
    """One decode step for a batch of b sequences: bytes = weight_bytes + b·bytes_per_seq."""

    weight_bytes: float = Field(gt=0)
    bytes_per_seq: float = Field(ge=0)
    flops_per_token: float = Field(gt=0)
    efficiency: float = Field(default=0.04, gt=0, le=1)
    tensor_share: float = Field(default=0.15, ge=0, le=1)


class OneshotSpec(_Model):
    """One-shot work (code2wav) per input token: effective FLOPs and arithmetic intensity."""

    flops_per_token: float = Field(gt=0)
    ai: float = Field(default=47.0, gt=0)
    efficiency: float = Field(default=0.5, gt=0, le=1)
    tensor_share: float = Field(default=0.6, ge=0, le=1)
    fixed_flops: float = Field(default=0.0, ge=0)


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
                    "in order), got {s.upstream!r}"
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
    pipeline: PipelineSpec
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    source_path: str | None = None

    @model_validator(mode="after")
    def _stages_on_gpus(self) -> Scenario:
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
            wl["trace"] = str((path.parent / trace).resolve())
    data["source_path"] = str(path)
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_format_error(exc, path)) from exc
