"""The Tri-serve strategy: stalls (D), arithmetic intensity (A), thermal (T), pipeline (P).

One `TriServeStrategy` runs per GPU inside a `ControlLoop`. Each tick it asks, in order:

1. the latency guard — p99 latency under control past the policy's bound relative to
   default-clock windows? hand the clock back to the PMU (reason ``slo-guard``);
2. D — are all the GPU's stages idle, waiting on upstream work, with no hand-off imminent?
   cut the clock to the stall clock (reason ``stall``); once it is down, *park*: drop the
   lock, where the idle GPU's driver keeps the low clock it has, so that without a lock it
   boosts the moment work arrives instead of a tick later (work or an upstream hand-off
   also restores boost explicitly). A driver that holds its boost state for a resident
   CUDA context (the default, arXiv 2605.23918) climbs back to boost once unlocked: the
   strategy sees the clock return while still stalled and from then on keeps the stall
   lock until work arrives, paying up to a tick at the stall clock on the next phase; an
   idle GPU that takes new requests (no upstream at work) holds its first-token floor
   instead, the clock a new prefill can start at within the TTFT bound;
3. A — memory-bound phase? lock its ridge clock (``ridge``), from a measured profile, the
   online ridge search or a counter estimate (`triserve.control.intensity`; the decision's
   `source` says which), within `PLANNED_SHARE` of the latency bound; compute-bound? full
   boost (``compute``). Does a stage on this GPU have requests queued? then a slower step
   is paid by every queued request: lift the ridge lock (``pipeline``, at boost);
4. P (off unless the policy enables it) — do this GPU's stages feed a stage elsewhere on
   the node whose queue has lasted? cap a busy, not compute-bound phase below boost
   (``pipeline``; `triserve.control.pipeline`); never while the guard holds clocks back;
5. T — would the temperature reach slowdown - headroom within the horizon? cap the clock at
   a sustainable value (``thermal``); while that ceiling holds, A's ridge lock counts its
   loss allowance from the ceiling instead of boost (the PMU default runs no faster there),
   which leaves more of the heat budget to the compute-bound phases.

Each component is switched separately by `ControlSettings` (the bench's ablations use that).
"""

from __future__ import annotations

from dataclasses import replace

from triserve.control.decisions import Decision, Reason, TickContext
from triserve.control.firsttoken import FirstTokenFloor
from triserve.control.intensity import IntensityEstimator
from triserve.control.phases import PhaseTracker
from triserve.control.pipeline import PipelineGovernor, protect
from triserve.control.settings import ControlSettings
from triserve.control.sloguard import SloGuard
from triserve.control.slotargets import SloTargetController
from triserve.control.thermal import ThermalGovernor

#: Share of the policy's latency bound that A's clocks plan to use (the ridge search's loss
#: allowance, the first-token floor); the rest is left to what they cannot see: the
#: search's window-to-window noise, queueing that one stage's slower service adds
#: downstream, and requests that meet several locks on their way.
PLANNED_SHARE = 0.7


class TriServeStrategy:
    """Per-GPU Tri-serve controller state; `decide` is called once per control tick."""

    name = "tri-serve"

    def __init__(self, settings: ControlSettings) -> None:
        self.settings = settings
        self.phases = PhaseTracker()
        self.intensity = IntensityEstimator(
            settings.intensity_source,
            settings.ridge_margin_pct,
            settings.ridge_floor_fraction,
            settings.max_throughput_loss_pct,
            {(stage, phase): mhz for stage, phase, mhz in settings.ridge_profile},
            # Under absolute targets too: A's own clocks keep within the relative bound, and
            # the targets' ceilings go lower where they leave room.
            FirstTokenFloor(PLANNED_SHARE * settings.max_latency_increase_pct)
            if settings.first_token_floor
            else None,
            settings.control_interval_s,
            PLANNED_SHARE * settings.max_latency_increase_pct,
        )
        self.thermal = ThermalGovernor(settings.thermal_headroom_c)
        # Absolute targets replace the relative guard: it would refuse any trade of latency.
        self.targets = (
            SloTargetController(settings.slo_targets, settings.slo_target_margin_pct)
            if settings.slo_targets
            else None
        )
        self.guard = (
            SloGuard(settings.max_latency_increase_pct)
            if settings.slo_guard and self.targets is None
            else None
        )
        self.pipeline = PipelineGovernor(settings) if settings.pipeline_enabled else None
        # Parking released the lock on the last tick; the driver was seen to boost an idle,
        # unlocked GPU (learned once, from the clock climbing back during a stall).
        self._parked = False
        self._idle_boosts = False
        # This tick's stall lock is the first-token floor of an idle entry GPU (it costs TTFT).
        self._entry_idle = False

    def decide(self, ctx: TickContext) -> Decision:
        """Choose this tick's clock ceiling and say why."""
        decision = self._decide(ctx)
        if self.targets is not None:
            unmet = self.targets.readout.unmet
            return replace(decision, slo=self.targets.readout, bound_unheld=unmet)
        if self.guard is not None and self.guard.unheld(ctx.now_s):
            return replace(decision, bound_unheld=True)
        return decision

    def _decide(self, ctx: TickContext) -> Decision:
        s = self.settings
        guard = self.guard
        tripped = guard is not None and guard.update(ctx.now_s, ctx.stages, ctx.at_default)
        if tripped:
            self.intensity.widen(ctx)
        cap = self.thermal.update(ctx) if s.thermal_enabled else None
        guard_active = guard is not None and guard.active(ctx.now_s)
        ceiling = (
            self.pipeline.update(ctx.now_s, ctx.stages, ctx.limits, guard_active)
            if self.pipeline is not None
            else None
        )
        if guard is not None and guard_active:
            if cap is not None:
                return Decision(
                    cap,
                    Reason.THERMAL,
                    f"{guard.message}; {self.thermal.message}",
                    guard_tripped=tripped,
                )
            return Decision(None, Reason.SLO_GUARD, guard.message, guard_tripped=tripped)
        decision = self._base(ctx)
        if self.targets is not None:
            decision = self._under_targets(ctx, decision)
        view = self.pipeline.view if self.pipeline is not None else None
        if view is not None and decision.reason is Reason.RIDGE:
            why = protect(view)  # the queues P read this tick, not read again
            if why is not None:
                decision = Decision(None, Reason.PIPELINE, why, source=decision.source)
        elif decision.reason is Reason.RIDGE:
            why = _queued_here(ctx)
            if why is not None:
                decision = Decision(None, Reason.PIPELINE, why, source=decision.source)
        if ceiling is not None and self.pipeline is not None:
            decision = _pipeline_capped(decision, ceiling, self.pipeline.message)
        if decision.reason is Reason.PIPELINE:
            self.intensity.search.interrupt(ctx.now_s)  # its window did not run its clock
        if cap is not None and decision.reason is Reason.RIDGE:
            decision = self._heat_limited(ctx, decision, cap)
        if cap is not None and (
            decision.target_sm_clock_mhz is None or decision.target_sm_clock_mhz > cap
        ):
            decision = Decision(cap, Reason.THERMAL, self.thermal.message)
        return decision

    def _heat_limited(self, ctx: TickContext, decision: Decision, cap: int) -> Decision:
        """A ridge lock on a heat-limited GPU, its allowance counted from T's ceiling.

        A's ridge lock `R` is the lowest clock whose modelled loss s·(f_boost/f - 1) (the
        clock-sensitive share of a memory-bound step, `triserve.control.search`) is within
        its allowance, counted from boost. While T holds a ceiling `C` the PMU default would
        not run the step at boost either (it throttles to about what the cooling carries
        away), so the same allowance is counted from `C`: the lock `f` with
        s·(f_boost/f - f_boost/C) = s·(f_boost/R - 1), i.e. 1/f = 1/C + 1/R - 1/f_boost,
        and never below A's floor (the first-token floor on an entry GPU). Every watt the
        memory-bound phase gives up cools the GPU, and T's ceiling then caps the
        compute-bound prefills, which lose their whole clock ratio, less.
        """
        target = decision.target_sm_clock_mhz
        if target is None:
            return decision
        limits = ctx.limits
        floor = limits.snap_up(self.intensity.floor_fraction * limits.default_max_mhz)
        inverse = 1.0 / cap + 1.0 / target - 1.0 / limits.default_max_mhz
        clock = max(floor, limits.snap_up(1.0 / inverse))
        if clock >= target:
            return decision
        if decision.source == "search":
            self.intensity.search.interrupt(ctx.now_s)  # its window would not run its clock
        return Decision(
            clock,
            Reason.THERMAL,
            f"{self.thermal.message}; heat-limited: ridge lock {target} MHz counted from the "
            f"{cap} MHz ceiling: {clock} MHz",
            source=decision.source,
        )

    def _under_targets(self, ctx: TickContext, decision: Decision) -> Decision:
        """`decision` under the SLO-target ceilings (mode Targets; see `slotargets`)."""
        targets = self.targets
        assert targets is not None
        tripped = targets.update(ctx.now_s, ctx.stages, ctx.limits)
        if targets.active(ctx.now_s):
            self.intensity.search.interrupt(ctx.now_s)
            return Decision(None, Reason.SLO_GUARD, targets.message, guard_tripped=tripped)
        if targets.readout.unmet and (decision.reason is not Reason.STALL or self._entry_idle):
            return Decision(
                None,
                Reason.SLO_GUARD,
                f"{targets.message}: a target is missed at boost, clocks cannot help: PMU default",
            )
        if decision.reason not in (Reason.RIDGE, Reason.COMPUTE):
            return decision
        ceiling = targets.ceiling(compute=decision.reason is Reason.COMPUTE)
        target = decision.target_sm_clock_mhz
        if ceiling is None or (target is not None and target <= ceiling):
            return decision
        if decision.source == "search":
            self.intensity.search.interrupt(ctx.now_s)  # its window would not run its clock
        return Decision(ceiling, decision.reason, targets.message, source="slo-targets")

    def _base(self, ctx: TickContext) -> Decision:
        s = self.settings
        sig = ctx.signals
        phases = self.phases.update(ctx.sample, ctx.stages, ctx.now_s)
        queued = any(o.serving is not None and o.serving.waiting > 0 for o in ctx.stages)
        self.intensity.observe_load(queued, ctx.dt_s)
        parked, self._parked = self._parked, False
        self._entry_idle = False
        if s.stalls_enabled and sig.stalled:
            if sig.work_imminent:
                return Decision(None, Reason.DEFAULT, "upstream just handed off: pre-warming")
            low = self._stall_clock(ctx)
            why = "upstream working" if sig.upstream_active else "no upstream work either"
            if parked and ctx.sample.sm_clock_mhz > low:
                self._idle_boosts = True
            if ctx.sample.sm_clock_mhz <= low and not self._idle_boosts:
                self._parked = True
                return Decision(
                    None,
                    Reason.STALL,
                    f"all stages idle ({why}): clock down at {low} MHz, lock released so the "
                    "GPU boosts the moment work arrives (parked)",
                )
            # Work reaches a GPU whose every stage has a visible upstream only through that
            # upstream, which shows it seconds before the hand-off: it may keep the lock.
            announced = all(o.upstream and o.upstream_serving for o in ctx.stages)
            if self._idle_boosts and not sig.upstream_active and not announced:
                entry = self._entry_idle_clock(ctx)
                if entry is not None:
                    self._entry_idle = True
                    return Decision(
                        entry,
                        Reason.STALL,
                        f"all stages idle, no upstream work either: holding {entry} MHz, the "
                        "first-token floor (a new request's prefill runs there until it is "
                        "seen, within the TTFT bound)",
                    )
                return Decision(
                    None,
                    Reason.STALL,
                    "all stages idle, no upstream work either: left to the driver, so the next "
                    "request starts at boost (a held lock would cost it up to a tick)",
                )
            if self._idle_boosts:
                return Decision(
                    low,
                    Reason.STALL,
                    f"all stages idle ({why}): holding {low} MHz (this GPU's driver boosts "
                    "an idle GPU once unlocked, so the lock stays until work arrives)",
                )
            return Decision(low, Reason.STALL, f"all stages idle ({why}): holding {low} MHz")
        if s.intensity_enabled and sig.busy:
            reason, clock, message, source = self.intensity.decide(ctx, phases)
            return Decision(clock, reason, message, source=source)
        return Decision(None, Reason.DEFAULT, "PMU default")

    def _entry_idle_clock(self, ctx: TickContext) -> int | None:
        """The lock an idle GPU that takes new requests may hold: its first-token floor.

        None where no floor prices one (SLO-target mode, too few first tokens yet).
        """
        first_token = self.intensity.first_token
        if first_token is None or not 0.0 < first_token.fraction < 1.0:
            return None
        limits = ctx.limits
        clock = limits.snap_up(self.intensity.floor_fraction * limits.default_max_mhz)
        return clock if clock < limits.default_max_mhz else None

    def _stall_clock(self, ctx: TickContext) -> int:
        wanted = self.settings.stall_clock_mhz
        if wanted <= 0:
            return ctx.limits.min_mhz
        return ctx.limits.snap_down(wanted)


def _queued_here(ctx: TickContext) -> str | None:
    """Why a ridge lock must lift now: requests wait for a stage on this GPU (None: none do).

    A queued request waits for the whole batch ahead of it, so a slower step stretches its
    wait many times over (the tail the latency bound is about); a decode worker's queue
    waits for KV transfers instead and does not count.
    """
    for o in ctx.stages:
        waiting = o.waiting(ctx.now_s)
        transferred = o.serving is not None and (o.serving.kv_transfer_tokens_total or 0) > 0
        if waiting and not (o.disaggregated_decode or transferred):
            return f"{o.stage}: {waiting} requests queued on this GPU: ridge lifted, full boost"
    return None


def _pipeline_capped(decision: Decision, ceiling_mhz: int, message: str) -> Decision:
    """`decision` under P's ceiling: stalls and compute phases keep their own clock.

    A stall already runs lower; a compute-bound phase (prefill) sets the time to first
    token, which a downstream queue does not hide.
    """
    if decision.reason in (Reason.STALL, Reason.COMPUTE, Reason.PIPELINE):
        return decision  # PIPELINE here: a queue on this GPU itself lifted the ridge
    target = decision.target_sm_clock_mhz
    if target is not None and target <= ceiling_mhz:
        return decision
    return Decision(ceiling_mhz, Reason.PIPELINE, message, source=decision.source)
