"""The per-GPU control loop: sample → signals → decide → actuate, once per tick.

Every tick returns one immutable `TickResult` (sample, signals, decision, energy of the
period); `LoopStats` and the node agent's report windows and baseline are folds over them.

`ControlLoop` is the single object the node agent runs per managed GPU in production and the
bench runs on the simulated backend. It sees only what the agent sees: the GPU sample of
its tick (handed in by the agent, which fills in dcgm-exporter activity, or read from the
backend) and the stage observations handed in (serving scrapes, stale by up to one scrape
interval). It calls a backend setter only when the target changes (NVML set calls every
tick disturb NCCL), never sets a clock outside the device's supported clocks or the
policy's limits (`_clamp`: the only place that bounds a lock by them), and in Observe mode
(``actuate=False``) records decisions without setting anything. `release()` hands clocks
back to the PMU and restores any power limit it changed.
`hold_default(until_s)` makes the ticks before `until_s` decide the PMU default (reason
``default``) whatever the strategy says, except a thermal cap, which ends the hold: the node
agent's baseline probes use it, so that the loop stays the only thing that sets clocks.
A stage observation older than its `max_age_s` (a scrape that stopped) makes the tick decide
the PMU default too, with the reason text naming the stale input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from triserve.control.baselines import build_strategy
from triserve.control.decisions import (
    Decision,
    DeviceLimits,
    Reason,
    StageSignals,
    Strategy,
    TickContext,
)
from triserve.control.settings import ControlSettings
from triserve.control.signals import SignalTracker
from triserve.gpu.backend import GpuBackend, GpuSample
from triserve.telemetry import StageObservation


@dataclass(frozen=True, slots=True)
class TickResult:
    """What one tick of one GPU saw, decided and cost: the unit every account folds over.

    `sample` covers the period since the previous tick, which ran as the loop left the GPU
    then (`at_default_before` says whether that was the PMU default); `energy_j` is the
    energy counter's increase over that period, `span_s` the period's length by the
    sample timestamps (both 0 on the first tick); `decision` is what this tick chose for the
    next period.
    """

    now_s: float
    dt_s: float
    sample: GpuSample
    signals: StageSignals
    decision: Decision
    energy_j: float
    span_s: float
    at_default_before: bool

    @property
    def stalled(self) -> bool:
        """True when every stage on the GPU waited on upstream work this tick."""
        return self.signals.stalled

    @property
    def throttled(self) -> bool:
        """True when the clock was cut for power or temperature over the period."""
        reasons = self.sample.clock_event_reasons
        return reasons.is_thermal or reasons.is_power

    @property
    def thermal(self) -> bool:
        """True when a thermal slowdown was active over the period."""
        return self.sample.clock_event_reasons.is_thermal


@dataclass(slots=True)
class LoopStats:
    """A fold over `TickResult`s: decisions and seconds by reason, stalls, throttling, energy."""

    ticks: int = 0
    decisions: dict[str, int] = field(default_factory=lambda: {r.value: 0 for r in Reason})
    seconds_by_reason: dict[str, float] = field(
        default_factory=lambda: {r.value: 0.0 for r in Reason}
    )
    stall_s: float = 0.0
    throttle_s: float = 0.0
    thermal_throttle_s: float = 0.0
    energy_j: float = 0.0
    clock_sets: int = 0
    power_sets: int = 0
    slo_guard_trips: int = 0

    def fold(self, result: TickResult) -> None:
        """Add one tick's result."""
        reason = result.decision.reason.value
        self.ticks += 1
        self.decisions[reason] = self.decisions.get(reason, 0) + 1
        self.seconds_by_reason[reason] = self.seconds_by_reason.get(reason, 0.0) + result.dt_s
        if result.stalled:
            self.stall_s += result.dt_s
        if result.throttled:
            self.throttle_s += result.dt_s
        if result.thermal:
            self.thermal_throttle_s += result.dt_s
        self.energy_j += result.energy_j
        if result.decision.guard_tripped:
            self.slo_guard_trips += 1

    def to_dict(self) -> dict[str, object]:
        """Plain-data form for reports and JSON."""
        return {
            "ticks": self.ticks,
            "decisions": dict(self.decisions),
            "seconds_by_reason": {k: round(v, 3) for k, v in self.seconds_by_reason.items()},
            "stall_s": round(self.stall_s, 3),
            "throttle_s": round(self.throttle_s, 3),
            "thermal_throttle_s": round(self.thermal_throttle_s, 3),
            "energy_j": round(self.energy_j, 3),
            "clock_sets": self.clock_sets,
            "power_sets": self.power_sets,
            "slo_guard_trips": self.slo_guard_trips,
        }


class ControlLoop:
    """Runs one strategy on one GPU through a `GpuBackend`."""

    def __init__(
        self,
        backend: GpuBackend,
        gpu_index: int,
        strategy: Strategy | None,
        settings: ControlSettings,
        actuate: bool | None = None,
    ) -> None:
        """`strategy` None builds the one `settings` names; `actuate` None follows settings."""
        self.backend = backend
        self.gpu_index = gpu_index
        self.settings = settings
        self.strategy: Strategy = strategy if strategy is not None else build_strategy(settings)
        self.actuate = settings.actuate if actuate is None else actuate
        self.limits = DeviceLimits.from_backend(
            backend, gpu_index, settings.clock_min_mhz, settings.clock_max_mhz
        )
        self.stats = LoopStats()
        self.last_decision: Decision | None = None
        self.last_sample: GpuSample | None = None
        self.last_result: TickResult | None = None
        self._signals = SignalTracker()
        self._applied_lock: tuple[int, int] | None = None
        self._applied_power_mw: int | None = None
        self._original_power_mw: int | None = None
        self._last_now_s: float | None = None
        self._hold_until_s: float | None = None
        self._hold_message = ""

    @property
    def applied_lock_mhz(self) -> tuple[int, int] | None:
        """The SM clock range this loop has locked (None = PMU default)."""
        return self._applied_lock

    @property
    def at_default(self) -> bool:
        """True while the GPU runs as the PMU leaves it (within the policy's clock limits).

        Always True in Observe mode, which sets nothing.
        """
        decision = self.last_decision
        if not self.actuate or decision is None:
            return True
        return decision.target_sm_clock_mhz is None and decision.power_limit_mw is None

    @property
    def holding_default(self) -> bool:
        """True while a `hold_default` is in force."""
        return self._hold_until_s is not None

    def hold_default(self, until_s: float, message: str = "baseline probe") -> None:
        """Decide the PMU default on every tick before `until_s` (the loop's clock).

        The strategy still runs every tick, so its state follows the GPU; a thermal cap
        wins over the hold and ends it. Does nothing in Observe mode.
        """
        if self.actuate:
            self._hold_until_s = until_s
            self._hold_message = message

    def tick(
        self,
        now_s: float,
        stages: Sequence[StageObservation],
        sample: GpuSample | None = None,
    ) -> TickResult:
        """Run one control step at `now_s` for the GPU's `stages`; return what it did.

        `sample` is the GPU's reading for this tick when the caller took it (the node agent
        merges dcgm-exporter activity into it); None samples the backend here.
        """
        if sample is None:
            sample = self.backend.sample(self.gpu_index)
        dt_s = (
            self.settings.control_interval_s
            if self._last_now_s is None
            else max(now_s - self._last_now_s, 0.0)
        )
        self._last_now_s = now_s
        at_default_before = self.at_default
        signals = self._signals.update(now_s, sample, stages)
        ctx = TickContext(now_s, dt_s, sample, stages, signals, self.limits, at_default_before)
        decision = self._held(now_s, self._clamp(self.strategy.decide(ctx)))
        decision = _unless_stale(decision, stages, now_s)
        if self.actuate:
            self._apply(decision)
        last = self.last_sample
        energy_j = span_s = 0.0
        if last is not None and sample.energy_mj >= last.energy_mj:
            energy_j = (sample.energy_mj - last.energy_mj) / 1000.0
            span_s = max(sample.timestamp_s - last.timestamp_s, 0.0)
        result = TickResult(
            now_s, dt_s, sample, signals, decision, energy_j, span_s, at_default_before
        )
        self.stats.fold(result)
        self.last_sample = sample
        self.last_decision = decision
        self.last_result = result
        return result

    def release(self) -> None:
        """Hand the clock back to the PMU and restore any power limit this loop changed."""
        if self._applied_lock is not None:
            self.backend.reset_sm_clocks(self.gpu_index)
            self._applied_lock = None
        self.release_power()

    def _held(self, now_s: float, decision: Decision) -> Decision:
        """The strategy's decision, or the PMU default while a `hold_default` lasts."""
        until_s = self._hold_until_s
        if until_s is None:
            return decision
        if now_s >= until_s or decision.reason is Reason.THERMAL:
            self._hold_until_s = None
            return decision
        return Decision(
            None,
            Reason.DEFAULT,
            f"{self._hold_message}: PMU default until t={until_s:.2f} s "
            f"(strategy wanted {decision.reason.value})",
            guard_tripped=decision.guard_tripped,
        )

    def _clamp(self, decision: Decision) -> Decision:
        """Keep the target inside the supported clocks and the policy's limits."""
        target = decision.target_sm_clock_mhz
        if target is None:
            return decision
        clamped = self.limits.snap_down(target)
        if clamped >= self.limits.default_max_mhz and not self.limits.policy_limited:
            clamped_target: int | None = None
        else:
            clamped_target = clamped
        if clamped_target == target:
            return decision
        return replace(decision, target_sm_clock_mhz=clamped_target)

    def _apply(self, decision: Decision) -> None:
        target = decision.target_sm_clock_mhz
        lock: tuple[int, int] | None
        if target is None:
            lock = (
                (self.limits.min_mhz, self.limits.default_max_mhz)
                if self.limits.policy_limited
                else None
            )
        else:
            lock = (self.limits.min_mhz, target)
        if lock != self._applied_lock:
            if lock is None:
                self.backend.reset_sm_clocks(self.gpu_index)
            else:
                self.backend.lock_sm_clocks(self.gpu_index, lock[0], lock[1])
            self._applied_lock = lock
            self.stats.clock_sets += 1
        self._apply_power(decision.power_limit_mw)

    def _apply_power(self, limit_mw: int | None) -> None:
        if limit_mw == self._applied_power_mw:
            return
        if limit_mw is None:
            self.release_power()
            return
        if self._original_power_mw is None:
            self._original_power_mw = self.backend.power_limit_mw(self.gpu_index)
        self.backend.set_power_limit_mw(self.gpu_index, limit_mw)
        self._applied_power_mw = limit_mw
        self.stats.power_sets += 1

    def release_power(self) -> None:
        """Restore the power limit this loop changed (clocks stay as they are)."""
        if self._original_power_mw is None:
            return
        if self._original_power_mw == self.limits.power_default_mw:
            self.backend.reset_power_limit(self.gpu_index)
        else:
            self.backend.set_power_limit_mw(self.gpu_index, self._original_power_mw)
        self._original_power_mw = None
        self._applied_power_mw = None
        self.stats.power_sets += 1


def _unless_stale(decision: Decision, stages: Sequence[StageObservation], now_s: float) -> Decision:
    """The PMU default when any stage's serving data is too old to act on."""
    for obs in stages:
        why = obs.stale_reason(now_s)
        if why is not None:
            return Decision(
                None,
                Reason.DEFAULT,
                f"stale telemetry, clocks at PMU default: {why}",
                guard_tripped=decision.guard_tripped,
            )
    return decision
