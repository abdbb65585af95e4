"""Status models: what the operator writes on an EnergyPolicy and the agent on its report.

`NodeEnergyReport` is cluster-scoped, one per node, named after the node and owned by it.
Its spec only names the node; everything observed lives in `status` (observed state is never
written into a spec).
"""

from __future__ import annotations

import enum

from pydantic import Field

from triserve.api.models import ApiModel, PolicyMode, Strategy


class ConditionStatus(enum.StrEnum):
    """Kubernetes condition status values."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """A standard Kubernetes condition (metav1.Condition)."""

    type: str = Field(min_length=1, max_length=316, description="Ready, Progressing, ….")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1, max_length=1024, description="CamelCase reason for the last transition."
    )
    message: str = Field(default="", max_length=32768, description="Human-readable detail.")
    observed_generation: int = Field(default=0, ge=0, description="Generation this reflects.")
    last_transition_time: str = Field(description="RFC 3339 time of the last status change.")


class EnergyWindow(ApiModel):
    """Energy over a reporting window."""

    joules: float = Field(default=0.0, ge=0.0, description="Energy in the window, joules.")
    average_watts: float = Field(default=0.0, ge=0.0, description="Mean power, watts.")
    window_seconds: float = Field(default=0.0, ge=0.0, description="Window length, seconds.")


class Efficiency(ApiModel):
    """Useful work per joule and how it compares with the PMU default."""

    tokens: float = Field(default=0.0, ge=0.0, description="Tokens generated in the window.")
    tokens_per_joule: float = Field(default=0.0, ge=0.0, description="Tokens per joule.")
    baseline_tokens_per_joule: float = Field(
        default=0.0, ge=0.0, description="Estimated tokens per joule under the PMU default."
    )
    improvement_percent: float = Field(
        default=0.0, description="tokensPerJoule vs baseline, percent."
    )
    method: str = Field(default="", description="How the baseline was estimated.")
    enforce_estimate_percent: float = Field(
        default=0.0,
        description="Observe mode only: the estimated tokensPerJoule gain Enforce would give "
        "over what was measured, percent (0 in Enforce mode).",
    )
    enforce_estimate_method: str = Field(
        default="", description="Observe mode only: how the Enforce estimate was made."
    )


class NodeCounts(ApiModel):
    """How many nodes a policy targets and how many of their agents report."""

    targeted: int = Field(default=0, ge=0, description="Nodes placed under this policy.")
    reporting: int = Field(default=0, ge=0, description="Nodes whose agent reported recently.")
    conflicted: int = Field(
        default=0, ge=0, description="Matching nodes held by a higher-priority policy."
    )


class GpuCounts(ApiModel):
    """GPUs under a policy."""

    managed: int = Field(default=0, ge=0, description="GPUs whose clocks the agents govern.")
    degraded: int = Field(default=0, ge=0, description="GPUs left at defaults after errors.")
    restore_failed: int = Field(
        default=0, ge=0, description="GPUs whose restore to defaults has not verified yet."
    )


class PowerBudgetStatus(ApiModel):
    """Where the policy's power budget stands (present while spec.powerBudget is set).

    `allocatedWatts` adds up every per-GPU cap counted against the budget, including the
    last caps of nodes that stopped reporting; `measuredWatts` adds up the board power the
    reporting GPUs last measured; `headroomWatts` is the budget less the measured power
    (negative when the fleet draws more than its budget).
    """

    budget_watts: float = Field(default=0.0, ge=0.0, description="spec.powerBudget.watts.")
    usable_watts: float = Field(
        default=0.0, ge=0.0, description="The budget less its margin: what caps may add up to."
    )
    allocated_watts: float = Field(
        default=0.0, ge=0.0, description="Sum of the per-GPU caps counted against the budget."
    )
    measured_watts: float = Field(
        default=0.0, ge=0.0, description="Sum of the reporting GPUs' measured board power."
    )
    headroom_watts: float = Field(
        default=0.0, description="Budget minus measured power (negative: over budget)."
    )
    capped_gpus: int = Field(default=0, ge=0, description="GPUs given a cap.")
    binding_gpus: int = Field(
        default=0,
        ge=0,
        description="GPUs whose budget cap, not the policy, held their clocks down in the "
        "last report window.",
    )
    held_watts: float = Field(
        default=0.0,
        ge=0.0,
        description="Caps of GPUs whose node stopped reporting, still counted against the budget.",
    )


class SloMeasurement(ApiModel):
    """One absolute target (mode Targets) against what the agent measured over its window."""

    scope: str = Field(description="pipeline/stage the target is judged on (stage '*': all).")
    metric: str = Field(description="ttft, interToken or e2e.")
    quantile: float = Field(ge=0.0, le=1.0, description="Quantile the target bounds.")
    target_seconds: float = Field(ge=0.0, description="The target, seconds.")
    measured_seconds: float = Field(default=0.0, ge=0.0, description="Measured quantile, s.")
    headroom_used_percent: float = Field(
        default=0.0, ge=0.0, description="Measured quantile as a share of the target, percent."
    )
    over_target_percent: float = Field(
        default=0.0, ge=0.0, le=100.0, description="Observations above the target, percent."
    )
    observations: float = Field(default=0.0, ge=0.0, description="Observations judged.")


class SloStatus(ApiModel):
    """Absolute SLO targets (spec.slo.mode Targets): the worst target and each of them."""

    headroom_used_percent: float = Field(
        default=0.0, ge=0.0, description="Largest measured quantile as a share of its target, %."
    )
    over_target_percent: float = Field(
        default=0.0,
        ge=0.0,
        le=100.0,
        description="Largest share of observations above their target, percent.",
    )
    targets: list[SloMeasurement] = Field(
        default_factory=list, max_length=256, description="Every target measured."
    )


class EnergyPolicyStatus(ApiModel):
    """Written by the operator only."""

    observed_generation: int = Field(default=0, ge=0, description="Last spec generation seen.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready, Progressing, …")
    nodes: NodeCounts = Field(default_factory=NodeCounts, description="Node counts.")
    gpus: GpuCounts = Field(default_factory=GpuCounts, description="GPU counts.")
    pods: dict[str, int] = Field(default_factory=dict, description="Serving pods by stage.")
    energy: EnergyWindow = Field(default_factory=EnergyWindow, description="Fleet energy.")
    efficiency: Efficiency = Field(default_factory=Efficiency, description="Fleet efficiency.")
    power_budget: PowerBudgetStatus | None = Field(
        default=None, description="The power budget's allocation (while spec.powerBudget is set)."
    )
    slo: SloStatus | None = Field(
        default=None, description="SLO targets across the nodes (mode Targets only)."
    )


class GpuState(enum.StrEnum):
    """Where a GPU stands with the agent."""

    MANAGED = "Managed"
    OBSERVED = "Observed"
    RELEASED = "Released"
    DEGRADED = "Degraded"
    #: Its restore did not read back at defaults; the agent keeps retrying.
    RESTORE_FAILED = "RestoreFailed"


class OperatingPoint(ApiModel):
    """One past report window of a GPU: its mean power, generation rate and cap then.

    The operator's power-budget allocation learns each GPU's tokens per extra watt from
    these (`triserve.operator.budget`).
    """

    watts: float = Field(ge=0.0, description="Mean board power over the window, watts.")
    tokens_per_second: float = Field(ge=0.0, description="Tokens generated per second.")
    cap_watts: float = Field(
        default=0.0, ge=0.0, description="Budget cap in force over the window; 0 = none."
    )
    capped_seconds: float = Field(
        default=0.0,
        ge=0.0,
        description="Seconds of the window the GPU was held at its power limit under a cap.",
    )
    busy_seconds: float | None = Field(
        default=None,
        ge=0.0,
        description="Seconds of the window a kernel ran (NVML utilisation); a GPU that is "
        "not busy throughout has tokens/s set by its load, not by its cap.",
    )
    seconds: float = Field(ge=0.0, description="Window length, seconds.")


class GpuReport(ApiModel):
    """Per-GPU state in a NodeEnergyReport."""

    index: int = Field(ge=0, description="Node-local GPU index.")
    uuid: str = Field(description="GPU UUID (GPU-…).")
    name: str = Field(default="", description="GPU model name.")
    state: GpuState = Field(
        description="Managed, Observed, Released, Degraded or RestoreFailed (defaults not "
        "verified after a restore; the agent keeps retrying)."
    )
    pods: list[str] = Field(default_factory=list, description="namespace/name of serving pods.")
    stages: list[str] = Field(default_factory=list, description="Stages running on the GPU.")
    target_sm_clock_mhz: int = Field(default=0, ge=0, description="Chosen SM clock; 0 = PMU.")
    applied_sm_clock_mhz: int = Field(default=0, ge=0, description="SM clock read back, MHz.")
    power_watts: float = Field(default=0.0, ge=0.0, description="Board power, watts.")
    temperature_celsius: float = Field(default=0.0, description="GPU temperature, °C.")
    energy_joules: float = Field(default=0.0, ge=0.0, description="Energy in the window, J.")
    stall_seconds: float = Field(default=0.0, ge=0.0, description="Stalled time in the window.")
    throttle_seconds: float = Field(default=0.0, ge=0.0, description="Throttled time, window.")
    decisions: dict[str, int] = Field(
        default_factory=dict, description="Decisions in the window by reason."
    )
    message: str = Field(default="", description="Why the GPU is in its state.")
    power_limit_min_watts: float = Field(
        default=0.0, ge=0.0, description="Lowest power limit the GPU accepts, watts."
    )
    power_limit_max_watts: float = Field(
        default=0.0, ge=0.0, description="Highest power limit the GPU accepts, watts."
    )
    power_cap_watts: float = Field(
        default=0.0,
        ge=0.0,
        description="Power-budget cap the agent enforces as a ceiling, watts; 0 = none.",
    )
    operating_points: list[OperatingPoint] = Field(
        default_factory=list,
        max_length=16,
        description="The GPU's last report windows, newest last (power-budget allocation).",
    )


class ReportPhase(enum.StrEnum):
    """The agent's overall state on its node."""

    MANAGING = "Managing"
    OBSERVING = "Observing"
    RELEASED = "Released"
    DEGRADED = "Degraded"
    #: At least one GPU's restore did not verify: the node may still hold locks.
    RESTORE_FAILED = "RestoreFailed"


class NodeEnergyReportSpec(ApiModel):
    """Identity only: which node this report describes."""

    node_name: str = Field(min_length=1, max_length=253, description="The node reported on.")


class NodeEnergyReportStatus(ApiModel):
    """Written by the node's agent every report interval."""

    policy: str = Field(default="", description="EnergyPolicy the node follows ('' if none).")
    policy_generation: int = Field(default=0, ge=0, description="Policy generation applied.")
    mode: PolicyMode | None = Field(default=None, description="Mode applied.")
    strategy: Strategy | None = Field(default=None, description="Strategy applied.")
    phase: ReportPhase = Field(
        description="Managing, Observing, Released, Degraded or RestoreFailed (some GPU may "
        "still hold clocks or a power limit set by triserve)."
    )
    last_report_time: str = Field(description="RFC 3339 time of this report.")
    managed_gpus: int = Field(default=0, ge=0, description="GPUs currently governed.")
    gpus: list[GpuReport] = Field(default_factory=list, description="Per-GPU state.")
    pods: dict[str, int] = Field(default_factory=dict, description="Serving pods by stage.")
    energy: EnergyWindow = Field(default_factory=EnergyWindow, description="Node energy.")
    efficiency: Efficiency = Field(default_factory=Efficiency, description="Node efficiency.")
    slo: SloStatus | None = Field(
        default=None, description="SLO targets on this node (mode Targets only)."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="RestoreFailed, StateFileWritable, GuardRailClamped, GpusFound, "
        "LatencyBoundHeld, SloTargetsMet.",
    )
