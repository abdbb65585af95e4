"""The per-GPU control loop: sample → signals → decide → actuate, once per tick.

`ControlLoop` is the single object the node agent runs per managed GPU in production and the
bench runs on the simulated backend. It sees only what the agent sees: the GPU sample it
takes at its own tick and the stage observations handed in (serving scrapes, stale by up to
one scrape interval). It calls a backend setter only when the target changes (NVML set calls
every tick disturb NCCL), never sets a clock outside the device's supported clocks or the
policy's limits, and in Observe mode (``actuate=False``) records decisions without setting
anything. `release()` hands clocks back to the PMU and restores any power limit it changed.
`hold_default(until_s)` makes the ticks before `until_s` decide the PMU default (reason
``default``) whatever the strategy says, except a thermal cap, which ends the hold: the node
agent's baseline probes use it, so that the loop stays the only thing that sets clocks.
A stage observation older than its `max_age_s` (a scrape that stopped) makes the tick decide
the PMU default too, with the reason text naming the stale input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from triserve.control.baselines import build_strategy
from triserve.control.decisions import Decision, DeviceLimits, Reason, Strategy, TickContext
from triserve.control.settings import ControlSettings
from triserve.control.signals import SignalTracker
from triserve.gpu.backend import GpuBackend, GpuSample
from triserve.telemetry import StageObservation


@dataclass(slots=True)
class LoopStats:
    """What a loop did so far: decisions and seconds by reason, stalls, throttling, energy."""

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

    def tick(self, now_s: float, stages: Sequence[StageObservation]) -> Decision:
        """Run one control step at `now_s` for the GPU's `stages`; return the decision."""
        sample = self.backend.sample(self.gpu_index)
        dt_s = (
            self.settings.control_interval_s
            if self._last_now_s is None
            else max(now_s - self._last_now_s, 0.0)
        )
        self._last_now_s = now_s
        signals = self._signals.update(now_s, sample, stages)
        ctx = TickContext(now_s, dt_s, sample, stages, signals, self.limits)
        decision = self._held(now_s, self._clamp(self.strategy.decide(ctx)))
        decision = _unless_stale(decision, stages, now_s)
        if self.actuate:
            self._apply(decision)
        self._account(decision, sample, dt_s, signals.stalled)
        self.last_decision = decision
        return decision

    def slo_guard_active(self, now_s: float) -> bool:
        """True while the strategy's SLO guard holds clocks back toward default."""
        guard = getattr(self.strategy, "guard", None)
        return bool(guard is not None and guard.active(now_s))

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
        return Decision(clamped_target, decision.reason, decision.message, decision.power_limit_mw)

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

    def _account(self, decision: Decision, sample: GpuSample, dt_s: float, stalled: bool) -> None:
        st = self.stats
        st.ticks += 1
        st.decisions[decision.reason.value] += 1
        st.seconds_by_reason[decision.reason.value] += dt_s
        if stalled:
            st.stall_s += dt_s
        reasons = sample.clock_event_reasons
        if reasons.is_thermal or reasons.is_power:
            st.throttle_s += dt_s
        if reasons.is_thermal:
            st.thermal_throttle_s += dt_s
        last = self.last_sample
        if last is not None and sample.energy_mj >= last.energy_mj:
            st.energy_j += (sample.energy_mj - last.energy_mj) / 1000.0
        self.last_sample = sample
        guard = getattr(self.strategy, "guard", None)
        trips = getattr(guard, "trips", None)
        if isinstance(trips, int):
            st.slo_guard_trips = trips


def _unless_stale(decision: Decision, stages: Sequence[StageObservation], now_s: float) -> Decision:
    """The PMU default when any stage's serving data is too old to act on."""
    for obs in stages:
        why = obs.stale_reason(now_s)
        if why is not None:
            return Decision(None, Reason.DEFAULT, f"stale telemetry, clocks at PMU default: {why}")
    return decision
