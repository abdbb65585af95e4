"""The per-GPU control loop: sample → signals → decide → actuate, once per tick.

Every tick returns one immutable `TickResult` (sample, signals, decision, energy of the
period); the node agent's counters, report windows and baseline are one fold over them
(`triserve.node_agent.accounting`).

`ControlLoop` is the single object the node agent runs per managed GPU in production and the
bench runs on the simulated backend. It sees only what the agent sees: the GPU sample of
its tick (handed in by the agent, which fills in dcgm-exporter activity, or read from the
backend) and the stage observations handed in (serving scrapes, stale by up to one scrape
interval). It calls a backend setter only when the target changes (NVML set calls every
tick disturb NCCL), never sets a clock outside the device's supported clocks or the
policy's limits (`_clamp`: the only place that bounds a lock by them), and in Observe mode
(``actuate=False``) records decisions without setting anything. `release()` hands clocks
back to the PMU and restores any power limit it changed.
`power_ceiling_mw` (set by the node agent from the power budget's cap for this GPU) is a
ceiling every decision lives under: the power limit applied is the strategy's own limit or
the ceiling, whichever is lower, set through the same setter and restored by the same
`release()`. The ceiling is outside the strategy's decision, so `at_default` (and the
baseline it prices) still means "the strategy leaves the GPU to the PMU"; a baseline probe
therefore measures the PMU default under the same cap.
`hold_default(until_s)` makes the ticks before `until_s` decide the PMU default (reason
``default``) whatever the strategy says, except a thermal cap, which ends the hold: the node
agent's baseline probes use it, so that the loop stays the only thing that sets clocks. The
loop also schedules those probes (`use_probes`, `triserve.control.probes`): at the end of a
tick that left a lock in force in a state the agent wants priced, it starts one.
A stage observation older than its `max_age_s` (a scrape that stopped) makes the tick decide
the PMU default too, with the reason text naming the stale input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from triserve.control.baselines import build_strategy
from triserve.control.decisions import (
    Decision,
    DeviceLimits,
    Reason,
    StageSignals,
    Strategy,
    TickContext,
)
from triserve.control.probes import ProbeSchedule
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
    #: The power-budget ceiling, not the strategy, was the limit in force over the period.
    budget_limited_before: bool = False

    @property
    def budget_capped(self) -> bool:
        """True when the budget's ceiling held the GPU at its power limit over the period."""
        return self.budget_limited_before and self.sample.clock_event_reasons.is_power

    @property
    def stalled(self) -> bool:
        """True when every stage on the GPU waited on upstream work this tick."""
        return self.signals.stalled

    @property
    def throttled(self) -> bool:
        """True when the clock was cut for power or temperature over the period."""
        reasons = self.sample.clock_event_reasons
        return reasons.is_thermal or reasons.is_power


#: Whether a baseline probe would help now: (this tick's sample, its stages) -> bool.
ProbeWanted = Callable[[GpuSample, Sequence[StageObservation]], bool]


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
        #: Clock-lock and power-limit calls this loop made (it sets only on a change).
        self.clock_sets = 0
        self.power_sets = 0
        self.last_decision: Decision | None = None
        self.last_sample: GpuSample | None = None
        self.last_result: TickResult | None = None
        self._signals = SignalTracker()
        self._applied_lock: tuple[int, int] | None = None
        self._applied_power_mw: int | None = None
        self._original_power_mw: int | None = None
        #: The power budget's cap for this GPU (None: no budget); see the module docstring.
        self.power_ceiling_mw: int | None = None
        self._budget_limited = False
        self._last_now_s: float | None = None
        self._hold_until_s: float | None = None
        self._hold_message = ""
        self._probes: ProbeSchedule | None = None
        self._wants_probe: ProbeWanted | None = None

    def use_probes(self, schedule: ProbeSchedule, wanted: ProbeWanted) -> None:
        """Start baseline probes on `schedule` when `wanted(sample, stages)` says so."""
        self._probes = schedule
        self._wants_probe = wanted

    def resume_from(self, sample: GpuSample | None) -> None:
        """The GPU's last sample before this loop: its first period is measured from it."""
        self.last_sample = sample

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
        budget_limited_before = self._budget_limited
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
            now_s,
            dt_s,
            sample,
            signals,
            decision,
            energy_j,
            span_s,
            at_default_before,
            budget_limited_before,
        )
        self.last_sample = sample
        self.last_decision = decision
        self.last_result = result
        self._maybe_probe(now_s, sample, stages)
        return result

    def _maybe_probe(
        self, now_s: float, sample: GpuSample, stages: Sequence[StageObservation]
    ) -> None:
        """Start a baseline probe if a lock is held in a state the agent wants priced."""
        schedule, wanted = self._probes, self._wants_probe
        if schedule is None or wanted is None or schedule.settings.interval_s <= 0:
            return
        if not self.actuate or self.at_default or self.holding_default:
            return
        # Never lift a thermal cap: that lock protects the GPU, not energy.
        decision = self.last_decision
        if now_s < schedule.next_s or decision is None or decision.reason is Reason.THERMAL:
            return
        if not wanted(sample, stages):
            return
        self.hold_default(now_s + schedule.settings.hold_s(self.settings.control_interval_s))
        schedule.start(now_s)

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
            slo=decision.slo,
            bound_unheld=decision.bound_unheld,
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
            self.clock_sets += 1
        limit_mw, ceiling_mw = decision.power_limit_mw, self.power_ceiling_mw
        self._budget_limited = ceiling_mw is not None and (
            limit_mw is None or ceiling_mw < limit_mw
        )
        if self._budget_limited:
            limit_mw = ceiling_mw
        self._apply_power(limit_mw)

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
        self.power_sets += 1

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
        self.power_sets += 1


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
                slo=decision.slo,
                bound_unheld=decision.bound_unheld,
            )
    return decision
