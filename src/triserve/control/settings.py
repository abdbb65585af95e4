"""Controller settings: the plain, validated subset of an `EnergyPolicySpec` a loop needs.

`ControlSettings.from_policy(spec)` is what the node agent calls when it learns its policy;
the bench builds settings directly (and through `replace`) for its strategies and ablations.
Everything here is immutable data with units in the names; behaviour varies only through it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from triserve.api.models import AISource, EnergyPolicySpec, PolicyMode, SloMode, SloSpec
from triserve.api.models import Strategy as PolicyStrategy
from triserve.control.slotargets import SloTargetSetting


class StrategyKind(enum.StrEnum):
    """Which controller a loop runs. The first four are user-facing policy strategies."""

    TRI_SERVE = "tri-serve"
    STATIC_CLOCK = "static"
    POWER_CAP = "power-cap"
    DEFAULT = "default"
    SLO_DVFS = "slo-dvfs"
    PHASE_DVFS = "phase-dvfs"


class IntensitySource(enum.StrEnum):
    """Where component A takes a memory-bound phase's ridge clock from (`intensity`)."""

    AUTO = "auto"
    PROFILE = "profile"
    SEARCH = "search"
    COUNTERS = "counters"


_POLICY_STRATEGIES = {
    PolicyStrategy.TRI_SERVE: StrategyKind.TRI_SERVE,
    PolicyStrategy.STATIC_CLOCK: StrategyKind.STATIC_CLOCK,
    PolicyStrategy.POWER_CAP: StrategyKind.POWER_CAP,
    PolicyStrategy.DEFAULT: StrategyKind.DEFAULT,
}
_AI_SOURCES = {
    AISource.AUTO: IntensitySource.AUTO,
    AISource.PROFILE: IntensitySource.PROFILE,
    AISource.SEARCH: IntensitySource.SEARCH,
    AISource.COUNTERS: IntensitySource.COUNTERS,
    AISource.DCGM: IntensitySource.COUNTERS,
    AISource.PHASE: IntensitySource.SEARCH,
}


@dataclass(frozen=True, slots=True)
class ControlSettings:
    """How one GPU's control loop behaves.

    Clock limits of 0 mean the device's own limit; `stall_clock_mhz` 0 lets the controller
    choose (the lowest allowed clock: the stall parks there with the lock released, so the PMU
    boosts as soon as work arrives);
    `ridge_margin_pct` is the safety margin added above an estimated ridge clock;
    `ridge_floor_fraction` is the lowest ridge lock as a fraction of the boost clock (a phase
    that starts between ticks runs at the lock until the next tick, so a very deep lock makes
    every phase change costly in latency); `slo_guard` enables the latency guard that backs
    clocks off toward default; `ridge_profile` lists (stage, phase, ridge MHz) measured by
    `triserve profile` (`spec.triServe.arithmeticIntensity.profile`); `slo_targets` non-empty
    is SLO-target mode (`spec.slo.mode: Targets`, `triserve.control.slotargets`): the
    absolute targets replace the relative latency guard, keeping `slo_target_margin_pct` of
    each target free. `first_token_floor` bounds A's lock on a GPU that hosts an entry
    stage so that p99 TTFT stays in bound (`triserve.control.firsttoken`; mode Relative).
    """

    strategy: StrategyKind = StrategyKind.TRI_SERVE
    actuate: bool = True
    stalls_enabled: bool = True
    stall_clock_mhz: int = 0
    intensity_enabled: bool = True
    intensity_source: IntensitySource = IntensitySource.AUTO
    thermal_enabled: bool = True
    thermal_headroom_c: float = 3.0
    static_clock_mhz: int | None = None
    power_cap_w: int | None = None
    clock_min_mhz: int = 0
    clock_max_mhz: int = 0
    max_latency_increase_pct: float = 1.0
    max_throughput_loss_pct: float = 0.5
    control_interval_s: float = 0.05
    ridge_margin_pct: float = 4.0
    ridge_floor_fraction: float = 0.35
    slo_guard: bool = True
    ridge_profile: tuple[tuple[str, str, int], ...] = ()
    pipeline_enabled: bool = False
    pipeline_queued_requests: int = 2
    pipeline_sustain_s: float = 2.0
    pipeline_min_fraction: float = 0.6
    pipeline_step_fraction: float = 0.05
    pipeline_step_s: float = 1.0
    first_token_floor: bool = True
    slo_targets: tuple[SloTargetSetting, ...] = ()
    slo_target_margin_pct: float = 20.0

    def __post_init__(self) -> None:
        if self.strategy is StrategyKind.STATIC_CLOCK and not self.static_clock_mhz:
            raise ValueError("strategy static needs static_clock_mhz (spec.staticClock.smClockMHz)")
        if self.strategy is StrategyKind.POWER_CAP and not self.power_cap_w:
            raise ValueError("strategy power-cap needs power_cap_w (spec.powerCap.watts)")
        if self.control_interval_s <= 0:
            raise ValueError("control_interval_s must be positive (spec.controlIntervalMs)")
        if self.clock_max_mhz and self.clock_min_mhz > self.clock_max_mhz:
            raise ValueError("clock_min_mhz is above clock_max_mhz (spec.clockLimits)")
        if self.pipeline_queued_requests < 1:
            raise ValueError(
                "pipeline_queued_requests must be at least 1 "
                "(spec.triServe.pipeline.queuedRequests)"
            )
        if not 0.0 < self.pipeline_min_fraction <= 1.0:
            raise ValueError(
                "pipeline_min_fraction must be in (0, 1] (spec.triServe.pipeline.minClockFraction)"
            )
        if self.pipeline_step_fraction <= 0 or self.pipeline_step_s < 0:
            raise ValueError("pipeline_step_fraction must be positive, pipeline_step_s >= 0")

    @classmethod
    def from_policy(cls, spec: EnergyPolicySpec) -> ControlSettings:
        """Translate a validated `EnergyPolicySpec` into loop settings."""
        ts = spec.tri_serve
        return cls(
            strategy=_POLICY_STRATEGIES[spec.strategy],
            actuate=spec.mode is PolicyMode.ENFORCE,
            stalls_enabled=ts.dependency_stalls.enabled,
            stall_clock_mhz=ts.dependency_stalls.stall_clock_mhz,
            intensity_enabled=ts.arithmetic_intensity.enabled,
            intensity_source=_AI_SOURCES[ts.arithmetic_intensity.source],
            thermal_enabled=ts.thermal.enabled,
            thermal_headroom_c=ts.thermal.headroom_c,
            static_clock_mhz=spec.static_clock.sm_clock_mhz if spec.static_clock else None,
            power_cap_w=spec.power_cap.watts if spec.power_cap else None,
            clock_min_mhz=spec.clock_limits.min_mhz,
            clock_max_mhz=spec.clock_limits.max_mhz,
            max_latency_increase_pct=spec.slo.max_latency_increase_percent,
            max_throughput_loss_pct=spec.slo.max_throughput_loss_percent,
            control_interval_s=spec.control_interval_ms / 1000.0,
            ridge_profile=tuple(
                (entry.stage, entry.phase.value, entry.ridge_mhz)
                for entry in ts.arithmetic_intensity.profile
            ),
            pipeline_enabled=ts.pipeline.enabled,
            pipeline_queued_requests=ts.pipeline.queued_requests,
            pipeline_sustain_s=ts.pipeline.sustain_s,
            pipeline_min_fraction=ts.pipeline.min_clock_fraction,
            slo_targets=targets_of(spec.slo),
            slo_target_margin_pct=spec.slo.target_margin_percent,
        )

    def only(self, component: str) -> ControlSettings:
        """Tri-serve with one component (``"D"``, ``"A"``, ``"T"`` or ``"P"``) enabled."""
        if component not in {"D", "A", "T", "P"}:
            raise ValueError(f"unknown Tri-serve component {component!r}; use D, A, T or P")
        return replace(
            self,
            strategy=StrategyKind.TRI_SERVE,
            stalls_enabled=component == "D",
            intensity_enabled=component == "A",
            thermal_enabled=component == "T",
            pipeline_enabled=component == "P",
        )


def targets_of(slo: SloSpec) -> tuple[SloTargetSetting, ...]:
    """The policy's absolute targets, one per metric named (empty unless mode Targets)."""
    if slo.mode is not SloMode.TARGETS:
        return ()
    out: list[SloTargetSetting] = []
    for t in slo.targets:
        for metric, seconds in (
            ("ttft", t.ttft_s),
            ("inter_token", t.inter_token_s),
            ("e2e", t.e2e_s),
        ):
            if seconds is not None:
                out.append(SloTargetSetting(metric, seconds, t.quantile, t.pipeline, t.stage))
    return tuple(out)
