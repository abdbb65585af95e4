"""The Tri-serve strategy: dependency stalls (D), arithmetic intensity (A), thermal (T).

One `TriServeStrategy` runs per GPU inside a `ControlLoop`. Each tick it asks, in order:

1. the SLO guard — tripped? hand the clock back to the PMU (reason ``slo-guard``);
2. D — are all the GPU's stages idle, waiting on upstream work, with no hand-off imminent?
   cut the clock to the stall clock (reason ``stall``); once it is down, *park*: drop the
   lock, because an idle GPU's PMU keeps the low clock it has, and without a lock it boosts
   the moment work arrives instead of a tick later (work or an upstream hand-off also
   restores boost explicitly). That the PMU stays low after an unlock while idle is what
   the simulator models; on real GPUs it is one of the behaviours the NVML checks measure;
3. A — memory-bound phase? lock the ridge clock (``ridge``); compute-bound? full boost
   (``compute``);
4. T — would the temperature reach slowdown - headroom within the horizon? cap the clock at
   a sustainable value (``thermal``).

Each component is switched separately by `ControlSettings` (the bench's ablations use that).
"""

from __future__ import annotations

from triserve.control.decisions import Decision, Reason, TickContext
from triserve.control.intensity import IntensityEstimator
from triserve.control.settings import ControlSettings
from triserve.control.sloguard import SloGuard
from triserve.control.thermal import ThermalGovernor


class TriServeStrategy:
    """Per-GPU Tri-serve controller state; `decide` is called once per control tick."""

    name = "tri-serve"

    def __init__(self, settings: ControlSettings) -> None:
        self.settings = settings
        self.intensity = IntensityEstimator(
            settings.intensity_source, settings.ridge_margin_pct, settings.ridge_floor_fraction
        )
        self.thermal = ThermalGovernor(settings.thermal_headroom_c)
        self.guard = SloGuard(settings.max_latency_increase_pct) if settings.slo_guard else None

    def decide(self, ctx: TickContext) -> Decision:
        """Choose this tick's clock ceiling and say why."""
        s = self.settings
        guard = self.guard
        if guard is not None and guard.update(ctx.now_s, ctx.stages):
            self.intensity.widen()
        cap = self.thermal.update(ctx) if s.thermal_enabled else None
        if guard is not None and guard.active(ctx.now_s):
            if cap is not None:
                return Decision(cap, Reason.THERMAL, f"{guard.message}; {self.thermal.message}")
            return Decision(None, Reason.SLO_GUARD, guard.message)
        decision = self._base(ctx)
        if cap is not None and (
            decision.target_sm_clock_mhz is None or decision.target_sm_clock_mhz > cap
        ):
            decision = Decision(cap, Reason.THERMAL, self.thermal.message)
        if guard is not None and decision.reason in (Reason.RIDGE, Reason.THERMAL):
            guard.note_controlled(ctx.now_s)
        return decision

    def _base(self, ctx: TickContext) -> Decision:
        s = self.settings
        sig = ctx.signals
        if s.stalls_enabled and sig.stalled:
            if sig.work_imminent:
                return Decision(None, Reason.DEFAULT, "upstream just handed off: pre-warming")
            low = self._stall_clock(ctx)
            why = "upstream working" if sig.upstream_active else "no upstream work either"
            if ctx.sample.sm_clock_mhz <= low:
                return Decision(None, Reason.STALL, f"all stages idle ({why}): parked at {low} MHz")
            return Decision(low, Reason.STALL, f"all stages idle ({why}): holding {low} MHz")
        if s.intensity_enabled and sig.busy:
            reason, clock, message = self.intensity.decide(ctx)
            return Decision(clock, reason, message)
        return Decision(None, Reason.DEFAULT, "PMU default")

    def _stall_clock(self, ctx: TickContext) -> int:
        wanted = self.settings.stall_clock_mhz
        if wanted <= 0:
            return ctx.limits.min_mhz
        return ctx.limits.snap_down(wanted)
