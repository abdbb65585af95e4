"""Pydantic models of the triserve API: `EnergyPolicy` and `NodeEnergyReport`.

These are the single source of truth for the CRDs (`triserve.api.crds` generates the
OpenAPI schema from them) and for the semantic checks the operator and the standalone agent
run. Python names are snake_case; the Kubernetes field names are the camelCase aliases.
Every numeric field carries its unit in its name.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel as _to_camel


def to_camel(name: str) -> str:
    """snake_case → the camelCase Kubernetes uses, keeping unit spellings (`minMHz`)."""
    camel = _to_camel(name)
    return camel[:-3] + "MHz" if camel.endswith("Mhz") else camel


class ApiModel(BaseModel):
    """Base: camelCase aliases, unknown fields rejected, population by either name."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=False,
        validate_default=True,
    )

    def to_k8s(self) -> dict[str, Any]:
        """Serialise with Kubernetes (camelCase) names, leaving out unset optionals."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class PolicyMode(enum.StrEnum):
    """Whether the agent actuates clocks or only records what it would do."""

    ENFORCE = "Enforce"
    OBSERVE = "Observe"


class Strategy(enum.StrEnum):
    """How clocks are chosen on the policy's GPUs."""

    TRI_SERVE = "TriServe"
    STATIC_CLOCK = "StaticClock"
    POWER_CAP = "PowerCap"
    DEFAULT = "Default"


class AISource(enum.StrEnum):
    """Where component A takes a memory-bound phase's ridge clock from.

    Profile: the `profile` list (measured by `triserve profile`); Search: the agent's online
    ridge search; Counters: an estimate from pipe vs DRAM activity (GPUs with per-tick
    counters only); Auto: the profile where it covers the phase, else the search. DCGM and
    Phase are the names of earlier releases, kept as aliases of Counters and Search.
    """

    AUTO = "Auto"
    PROFILE = "Profile"
    SEARCH = "Search"
    COUNTERS = "Counters"
    DCGM = "DCGM"
    PHASE = "Phase"


class ServingPhase(enum.StrEnum):
    """A serving phase a ridge profile entry applies to."""

    PREFILL = "prefill"
    DECODE = "decode"
    ONESHOT = "oneshot"


class SelectorOperator(enum.StrEnum):
    """Operators of a label selector requirement (as in Kubernetes)."""

    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


LabelKey = Annotated[str, Field(min_length=1, max_length=316)]
#: A Kubernetes namespace name (an RFC 1123 label).
NamespaceName = Annotated[
    str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
]


class LabelSelectorRequirement(ApiModel):
    """One `matchExpressions` entry."""

    key: LabelKey = Field(description="Label key the requirement applies to.")
    operator: SelectorOperator = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[str] = Field(
        default_factory=list,
        description="Values for In/NotIn (non-empty); must be empty for Exists/DoesNotExist.",
    )

    @model_validator(mode="after")
    def _values_match_operator(self) -> Self:
        needs_values = self.operator in (SelectorOperator.IN, SelectorOperator.NOT_IN)
        if needs_values and not self.values:
            raise ValueError(f"values: operator {self.operator.value} needs at least one value")
        if not needs_values and self.values:
            raise ValueError(f"values: operator {self.operator.value} takes no values; remove them")
        return self


class LabelSelector(ApiModel):
    """A Kubernetes label selector; empty selects everything."""

    match_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels that must all be present with these values."
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, description="Requirements that must all hold."
    )


class StallSpec(ApiModel):
    """Component D: low clocks while a stage waits on its upstream."""

    enabled: bool = Field(default=True, description="Lower clocks during dependency stalls.")
    stall_clock_mhz: int = Field(
        default=0,
        ge=0,
        le=5000,
        description="SM clock to hold during a stall, in MHz; 0 lets triserve choose.",
    )


class RidgeProfileEntry(ApiModel):
    """One measured ridge clock: the lowest clock at which a stage's phase keeps its rate."""

    stage: str = Field(min_length=1, max_length=63, description="Stage name, e.g. thinker.")
    phase: ServingPhase = Field(description="prefill, decode or oneshot.")
    ridge_mhz: int = Field(ge=1, le=5000, description="Ridge SM clock in MHz.")


class ArithmeticIntensitySpec(ApiModel):
    """Component A: clocks chosen from arithmetic intensity."""

    enabled: bool = Field(default=True, description="Run memory-bound phases at the ridge clock.")
    source: AISource = Field(
        default=AISource.AUTO,
        description="Auto (profile where it covers the phase, else online search), Profile, "
        "Search or Counters.",
    )
    profile: list[RidgeProfileEntry] = Field(
        default_factory=list,
        max_length=64,
        description="Ridge clocks per stage and phase, as written by `triserve profile`.",
    )


class ThermalSpec(ApiModel):
    """Component T: hold a sustainable clock instead of hitting thermal slowdown."""

    enabled: bool = Field(default=True, description="Predict temperature and avoid throttling.")
    headroom_c: float = Field(
        default=3.0,
        alias="headroomCelsius",
        ge=0.0,
        le=30.0,
        description="Degrees Celsius below the slowdown threshold to stay under.",
    )


class PipelineSpec(ApiModel):
    """Component P: lower the clocks of stages upstream of a queued bottleneck on the node."""

    enabled: bool = Field(
        default=False,
        description="Cap the clock of a GPU whose stages feed a stage with a sustained queue.",
    )
    queued_requests: int = Field(
        default=2,
        ge=1,
        le=1000,
        description="Waiting requests at a downstream stage that count as a queue; the cap "
        "is lifted when fewer than half of them (at least one) remain.",
    )
    sustain_s: float = Field(
        default=2.0,
        alias="sustainSeconds",
        ge=0.0,
        le=600.0,
        description="Seconds the downstream queue must last before the upstream GPU is capped.",
    )
    min_clock_fraction: float = Field(
        default=0.6,
        ge=0.1,
        le=1.0,
        description="Lowest cap, as a fraction of the boost clock (never below the ridge "
        "floor the other components respect).",
    )


class TriServeSpec(ApiModel):
    """The Tri-serve components; each can be switched off on its own."""

    dependency_stalls: StallSpec = Field(default_factory=StallSpec, description="Component D.")
    arithmetic_intensity: ArithmeticIntensitySpec = Field(
        default_factory=ArithmeticIntensitySpec, description="Component A."
    )
    thermal: ThermalSpec = Field(default_factory=ThermalSpec, description="Component T.")
    pipeline: PipelineSpec = Field(
        default_factory=PipelineSpec, description="Component P (off unless enabled)."
    )


class StaticClockSpec(ApiModel):
    """Settings of the StaticClock strategy."""

    sm_clock_mhz: int = Field(ge=1, le=5000, description="SM clock to lock, in MHz.")


class PowerCapSpec(ApiModel):
    """Settings of the PowerCap strategy."""

    watts: int = Field(ge=1, le=2000, description="Power limit per GPU, in watts.")


#: The largest power budget the API takes, in watts (100 MW: far above any GPU fleet).
MAX_POWER_BUDGET_W = 100_000_000


class PowerBudgetSpec(ApiModel):
    """A power budget the operator shares across the policy's GPUs as per-GPU power caps.

    The bounds are checked here and by the CRD's CEL rules (`triserve.api.crds`), with the
    same messages, so the API server and a standalone policy file refuse the same values.
    """

    watts: int = Field(
        le=MAX_POWER_BUDGET_W,
        description="Power the policy's GPUs may draw together, in watts; must be > 0.",
    )
    margin_percent: float = Field(
        default=5.0,
        description="Share of the budget kept unallocated as a safety margin, percent; "
        "0 <= marginPercent < 50. The per-GPU caps add up to at most watts x (1 - margin).",
    )

    @field_validator("watts")
    @classmethod
    def _watts_positive(cls, watts: int) -> int:
        if watts <= 0:
            raise ValueError(f"{watts} {WATTS_RULE}")
        return watts

    @field_validator("margin_percent")
    @classmethod
    def _margin_in_range(cls, margin: float) -> float:
        if not 0.0 <= margin < 50.0:
            raise ValueError(f"{margin} {MARGIN_RULE}")
        return margin

    @property
    def usable_w(self) -> float:
        """What the caps may add up to: the budget less its margin, in watts."""
        return self.watts * (1.0 - self.margin_percent / 100.0)


#: What the power-budget bounds say, shared by pydantic and the CEL rules (`crds.py`).
WATTS_RULE = "must be greater than 0: the budget of the policy's GPUs together, in watts"
MARGIN_RULE = "must be at least 0 and below 50: the percent of the budget kept unallocated, e.g. 5"


class ClockLimits(ApiModel):
    """Bounds on any SM clock triserve locks; 0 means the device's own limit."""

    min_mhz: int = Field(default=0, ge=0, le=5000, description="Lowest SM clock, MHz; 0 = device.")
    max_mhz: int = Field(default=0, ge=0, le=5000, description="Highest SM clock, MHz; 0 = device.")

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Self:
        if self.max_mhz and self.min_mhz > self.max_mhz:
            raise ValueError(
                f"minMHz: {self.min_mhz} is above maxMHz ({self.max_mhz}); lower minMHz, "
                "raise maxMHz, or set maxMHz to 0 for the device limit"
            )
        return self


class SloMode(enum.StrEnum):
    """What bounds the latency a policy may trade for energy."""

    RELATIVE = "Relative"
    TARGETS = "Targets"


#: Longest latency target, in seconds (an hour: beyond that a target bounds nothing real).
MAX_TARGET_S = 3600.0


class SloTarget(ApiModel):
    """Absolute latency targets of one pipeline, or of one stage of it.

    With `stage` unset the target is the pipeline's: its TTFT is judged on the pipeline's
    entry stages (those with no upstream), its inter-token latency on every stage that
    generates tokens, its end-to-end latency on the pipeline as the agent sees it
    (docs/controller.md, "SLO targets"). With `stage` set, on that stage's own engine.
    """

    pipeline: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        description="Pipeline (triserve.io/pipeline annotation) the target applies to.",
    )
    stage: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        description="Stage the target applies to (every pipeline's stage of that name when "
        "pipeline is unset).",
    )
    quantile: float = Field(
        default=0.99, ge=0.5, le=0.999, description="Latency quantile the targets bound."
    )
    ttft_s: float | None = Field(
        default=None,
        alias="ttftSeconds",
        ge=0.001,
        le=MAX_TARGET_S,
        description="Time to first token at the quantile, seconds.",
    )
    inter_token_s: float | None = Field(
        default=None,
        alias="interTokenSeconds",
        ge=0.0001,
        le=60.0,
        description="Inter-token latency at the quantile, seconds.",
    )
    e2e_s: float | None = Field(
        default=None,
        alias="e2eSeconds",
        ge=0.001,
        le=MAX_TARGET_S,
        description="End-to-end request latency at the quantile, seconds.",
    )

    @model_validator(mode="after")
    def _names_something(self) -> Self:
        if self.pipeline is None and self.stage is None:
            raise ValueError("pipeline: a target needs a pipeline, a stage or both")
        if self.ttft_s is None and self.inter_token_s is None and self.e2e_s is None:
            raise ValueError(
                "ttftSeconds: a target needs at least one of ttftSeconds, interTokenSeconds "
                "and e2eSeconds"
            )
        return self


class SloSpec(ApiModel):
    """How much service quality the policy may trade for energy."""

    mode: SloMode = Field(
        default=SloMode.RELATIVE,
        description="Relative: p99 latency within maxLatencyIncreasePercent of the PMU "
        "default's. Targets: every GPU as low as the absolute targets allow.",
    )
    max_latency_increase_percent: float = Field(
        default=1.0, ge=0.0, le=100.0, description="Allowed p99 latency inflation, percent."
    )
    max_throughput_loss_percent: float = Field(
        default=0.5, ge=0.0, le=100.0, description="Allowed throughput loss, percent."
    )
    targets: list[SloTarget] = Field(
        default_factory=list,
        max_length=64,
        description="Absolute latency targets (mode Targets only).",
    )
    target_margin_percent: float = Field(
        default=20.0,
        ge=0.0,
        le=50.0,
        description="Share of each target kept free: clocks go down only while the measured "
        "quantile stays below target x (1 - margin).",
    )

    @model_validator(mode="after")
    def _targets_match_mode(self) -> Self:
        if self.mode is SloMode.TARGETS and not self.targets:
            raise ValueError("targets: mode Targets needs at least one target")
        if self.mode is SloMode.RELATIVE and self.targets:
            raise ValueError("mode: targets are listed but mode is Relative; set mode: Targets")
        return self


class MigMode(enum.StrEnum):
    """What the node agent may do with a GPU in MIG mode (its SM clocks are shared)."""

    OBSERVE = "Observe"
    GOVERN_WHEN_EXCLUSIVE = "GovernWhenExclusive"


class MigSpec(ApiModel):
    """GPUs in MIG mode: every instance shares the physical GPU's SM clocks."""

    mode: MigMode = Field(
        default=MigMode.OBSERVE,
        description=(
            "Observe: never set clocks on a GPU in MIG mode. GovernWhenExclusive: govern it "
            "while dcgm-exporter shows a pod on every MIG instance and every such pod is one "
            "this policy selects; otherwise observe it."
        ),
    )


class GpuAnnotationSpec(ApiModel):
    """Who may place a pod on a GPU with the `triserve.io/gpus` annotation."""

    trusted_namespaces: list[NamespaceName] = Field(
        default_factory=list,
        max_length=256,
        description=(
            "Namespaces whose triserve.io/gpus annotations are honoured for GPUs the kubelet's "
            "pod-resources API does not show the pod holding (shared or DRA-allocated GPUs). "
            "Any other pod's annotation is ignored there, and no annotation ever claims a GPU "
            "pod-resources shows held by a pod of another namespace."
        ),
    )


class EnergyPolicySpec(ApiModel):
    """What the user asks for: which nodes and pods, and how to manage their GPU clocks."""

    node_selector: LabelSelector = Field(
        default_factory=LabelSelector,
        description="Nodes to manage (only nodes with GPUs are taken). Empty: every GPU node.",
    )
    pod_selector: LabelSelector = Field(
        default_factory=LabelSelector,
        description="Serving pods that count. Empty: every pod with a stage on the node.",
    )
    priority: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="Higher wins when policies select the same node (then older, then name).",
    )
    mode: PolicyMode = Field(
        default=PolicyMode.ENFORCE, description="Enforce sets clocks; Observe only records."
    )
    strategy: Strategy = Field(default=Strategy.TRI_SERVE, description="How clocks are chosen.")
    tri_serve: TriServeSpec = Field(
        default_factory=TriServeSpec, description="TriServe strategy components."
    )
    static_clock: StaticClockSpec | None = Field(
        default=None, description="Required when strategy is StaticClock."
    )
    power_cap: PowerCapSpec | None = Field(
        default=None, description="Required when strategy is PowerCap."
    )
    clock_limits: ClockLimits = Field(
        default_factory=ClockLimits, description="Bounds on every clock triserve sets."
    )
    power_budget: PowerBudgetSpec | None = Field(
        default=None,
        description="Power budget shared across the policy's GPUs (docs/power-budget.md); "
        "the operator gives each GPU a power cap that the agent enforces as a ceiling.",
    )
    slo: SloSpec = Field(default_factory=SloSpec, description="Service-level guard rails.")
    mig: MigSpec = Field(default_factory=MigSpec, description="GPUs in MIG mode.")
    gpu_annotations: GpuAnnotationSpec = Field(
        default_factory=GpuAnnotationSpec,
        description="Which namespaces may place pods on GPUs with the triserve.io/gpus annotation.",
    )
    control_interval_ms: int = Field(
        default=50, ge=10, le=10_000, description="Control tick per GPU, in milliseconds."
    )
    report_interval_s: int = Field(
        default=30,
        ge=5,
        le=3600,
        alias="reportIntervalSeconds",
        description="How often each node writes its NodeEnergyReport, in seconds.",
    )

    @model_validator(mode="after")
    def _strategy_settings_present(self) -> Self:
        if self.strategy is Strategy.STATIC_CLOCK and self.static_clock is None:
            raise ValueError("staticClock: strategy StaticClock needs staticClock.smClockMHz")
        if self.strategy is Strategy.POWER_CAP and self.power_cap is None:
            raise ValueError("powerCap: strategy PowerCap needs powerCap.watts")
        if (
            self.static_clock is not None
            and self.clock_limits.max_mhz
            and self.static_clock.sm_clock_mhz > self.clock_limits.max_mhz
        ):
            raise ValueError(
                f"staticClock.smClockMHz: {self.static_clock.sm_clock_mhz} is above "
                f"clockLimits.maxMHz ({self.clock_limits.max_mhz}); lower it or raise the limit"
            )
        return self


class ObjectMeta(ApiModel):
    """The part of Kubernetes metadata triserve reads."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")
    name: str = Field(min_length=1, max_length=253, description="Object name.")
    generation: int | None = Field(default=None, description="Spec generation.")


class EnergyPolicy(ApiModel):
    """A whole EnergyPolicy manifest as a user writes it (status is ignored here)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")
    api_version: str = Field(description="Must be triserve.io/v1alpha1.")
    kind: str = Field(description="Must be EnergyPolicy.")
    metadata: ObjectMeta
    spec: EnergyPolicySpec = Field(default_factory=EnergyPolicySpec)

    @model_validator(mode="after")
    def _type_matches(self) -> Self:
        if self.api_version != "triserve.io/v1alpha1":
            raise ValueError(f"apiVersion is {self.api_version!r}; use triserve.io/v1alpha1")
        if self.kind != "EnergyPolicy":
            raise ValueError(f"kind is {self.kind!r}; use EnergyPolicy")
        return self
