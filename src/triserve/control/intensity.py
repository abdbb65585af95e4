"""Component A: choose the clock of a memory-bound phase from signals real GPUs give.

Roofline: throughput ``Θ = min(η·f, β·AI)``; the ridge clock ``f* = β·AI/η`` is the lowest
clock with no throughput loss. Real counters do not hand out ``f*``: a memory-bound decode
that fills the GPU reads SM_ACTIVE ≈ 1 (a warp waiting on memory is resident), DRAM activity
saturates near 0.8, and on hardware a share of decode time still scales with the clock (see
docs/controller.md). So the ridge comes from one of three sources, chosen by the policy
(`spec.triServe.arithmeticIntensity.source`):

- ``Profile``: ridge clocks per stage and phase measured offline by `triserve profile`
  (locked-clock sweeps of the serving engine's own token rate) and listed in the policy;
  the agent combines them with the phase it reads from the serving metrics;
- ``Search``: the online ridge search (`triserve.control.search`) — paired windows at
  boost and at a candidate clock, fitted to a one-parameter model of the step's
  clock-sensitive share; the lock is the lowest clock whose predicted loss of token rate is
  within the allowed one (`observe_load`);
- ``Counters``: an estimate from compute-pipe activity against DRAM activity relative to the
  device's saturation, ``f* ≈ f · tensor_active / (dram_active / DRAM_SATURATION)``. It
  assumes the phase's kernels could reach the pipe's peak, so it is a lower bound of the
  ridge; it is used only where the GPU has per-tick pipe counters (GPM), with a margin, and
  the latency guard watches it. It never reads SM_ACTIVE.

``Auto`` takes the profile where it names every active phase, else the search (started at
the counter estimate when there is one). A phase whose pipe counters or serving metrics say
compute-bound (prefill, encoders) gets the boost clock at once. Used by
`triserve.control.tristrategy.TriServeStrategy`.
"""

from __future__ import annotations

from collections.abc import Mapping

from triserve.control.decisions import Reason, TickContext
from triserve.control.firsttoken import FirstTokenFloor
from triserve.control.phases import (
    DECODE,
    DRAM_SATURATION,
    PhaseView,
    busy_fraction,
    phase_activity,
)
from triserve.control.search import RidgeSearch
from triserve.control.settings import IntensitySource

#: Below this busy fraction of the sample period the pipe counters are not trusted.
MIN_BUSY = 0.2
#: Seconds over which the GPU's queued share (its load, for the search's bound) averages.
LOAD_WINDOW_S = 120.0

#: One A decision: (reason, clock ceiling or None for boost, message, source).
AChoice = tuple[Reason, int | None, str, str]


class IntensityEstimator:
    """Per-GPU component A: the policy's ridge source, its search state and its margins."""

    def __init__(
        self,
        source: IntensitySource,
        margin_pct: float,
        floor_fraction: float,
        max_loss_pct: float,
        profile: Mapping[tuple[str, str], int] | None = None,
        first_token: FirstTokenFloor | None = None,
        tick_s: float = 0.05,
        latency_bound_pct: float | None = None,
    ) -> None:
        self.source = source
        self.margin = 1.0 + margin_pct / 100.0
        self.base_floor_fraction = floor_fraction
        self.floor_fraction = floor_fraction
        self.first_token = first_token
        self.tick_s = tick_s
        self.profile = dict(profile or {})
        self.search = RidgeSearch(max_loss_pct)
        self.extra_margin = 0.0
        self.max_loss_pct = max_loss_pct
        self.latency_bound_pct = latency_bound_pct
        #: Share of recent ticks with requests waiting on this GPU (EWMA, `LOAD_WINDOW_S`).
        self.queued_share = 0.0

    def observe_load(self, queued: bool, dt_s: float) -> None:
        """Fold one tick into the GPU's queued share; narrow the search's loss bound with it.

        A stage that serves ``eps`` slower stretches each request's own time by ``eps``; once
        requests queue for it, every queued one also waits longer, ``eps / (1 - rho)`` at
        utilisation ``rho`` (M/M/1), so near saturation a small loss of rate is a long wait.
        The share of ticks with requests waiting estimates ``rho`` (an M/M/1 server is
        busy, so a newcomer waits, with probability ``rho``), and the search accepts at most
        ``bound · (1 - rho)`` of the latency bound, besides the throughput bound
        (`maxThroughputLossPercent`).
        """
        if dt_s > 0:
            alpha = min(dt_s / LOAD_WINDOW_S, 1.0)
            self.queued_share += alpha * ((1.0 if queued else 0.0) - self.queued_share)
        allowed = self.max_loss_pct
        if self.latency_bound_pct is not None:
            rho = self.queued_share
            allowed = min(
                self.latency_bound_pct * (1.0 - rho),
                self.max_loss_pct / max(rho, 1e-6),
            )
        self.search.max_loss = max(allowed, 0.0) / 100.0

    def decide(self, ctx: TickContext, phases: PhaseView) -> AChoice:
        """The clock for a busy GPU in phase `phases`."""
        if self.first_token is not None:
            prefill = phases.compute_now or phases.has_prefill
            if prefill and ctx.at_default:
                self.first_token.observe_prefill(
                    ctx.sample.sm_clock_mhz, ctx.limits.default_max_mhz
                )
            entry = self.first_token.update(ctx.sample, ctx.stages, self.tick_s)
            self.floor_fraction = max(self.base_floor_fraction, entry)
        if phases.compute_now:
            return Reason.COMPUTE, None, "tensor pipe busy (compute-bound phase): full boost", ""
        if phases.has_prefill:
            return Reason.COMPUTE, None, f"prefill ({phases.label}): full boost", ""
        estimate = self._counter_estimate(ctx)
        if self.source is IntensitySource.COUNTERS:
            if estimate is not None:
                return self._ridge(ctx, estimate, "counters", "counter estimate")
            return self._search(ctx, phases, None, _no_counters(ctx))
        if self.source in (IntensitySource.AUTO, IntensitySource.PROFILE) and phases.key:
            profiled = [self.profile.get(pair) for pair in phases.key]
            if all(p is not None for p in profiled):
                top = max(p for p in profiled if p is not None)
                return self._ridge(ctx, top, "profile", f"profiled ridge of {phases.label}")
            if self.source is IntensitySource.PROFILE:
                return self._search(ctx, phases, estimate, "no profile for this phase")
        return self._search(ctx, phases, estimate, "")

    def _search(
        self, ctx: TickContext, phases: PhaseView, estimate: float | None, why: str
    ) -> AChoice:
        if not phases.key:
            if phases.unknown:
                return (
                    Reason.DEFAULT,
                    None,
                    f"phase unknown ({'; '.join(phases.unknown)}); the GPU's counters show "
                    "no compute-bound phase: PMU",
                    "",
                )
            return Reason.DEFAULT, None, "busy, but no serving metrics say which phase: PMU", ""
        # The search measures token rates, so its key is the decoding stages; a one-shot
        # stage sharing the GPU (a vocoder) only adds load to what it measures.
        key = tuple(pair for pair in phases.key if pair[1] == DECODE)
        if not key:
            return Reason.COMPUTE, None, f"{phases.label}: no token rate to search on: boost", ""
        floor = ctx.limits.snap_up(self.floor_fraction * ctx.limits.default_max_mhz)
        if floor >= ctx.limits.default_max_mhz:
            # No lock below boost is allowed yet (too few first tokens to price one): the
            # search waits rather than settle at boost for a whole re-check period.
            self.search.interrupt(ctx.now_s)
            return Reason.COMPUTE, None, self._entry_note(), "search"
        start = ctx.limits.snap_up(estimate * self.margin) if estimate is not None else None
        clock = self.search.clock(ctx.now_s, key, ctx.stages, ctx.limits, start)
        message = self.search.message + (f" ({why})" if why else "")
        if clock is None:
            return Reason.COMPUTE, None, message, "search"
        if clock < floor:
            # The window would run the floor, not its candidate (and the fit would take the
            # floor's loss for the candidate's): try the floor instead.
            self.search.respect_floor(ctx.now_s, floor)
        return Reason.RIDGE, max(clock, floor), message, "search"

    def _counter_estimate(self, ctx: TickContext) -> float | None:
        """Ridge clock from pipe activity vs DRAM activity (None where counters can't say)."""
        act = phase_activity(ctx.sample)
        busy = busy_fraction(ctx.sample)
        if act is None or busy < MIN_BUSY or act.dram_active <= 0.05 * busy:
            return None
        dram = min(act.dram_active / busy / DRAM_SATURATION, 1.0)
        tensor = act.tensor_active / busy
        return ctx.sample.sm_clock_mhz * tensor / dram

    def _ridge(self, ctx: TickContext, ridge_mhz: float, source: str, what: str) -> AChoice:
        limits = ctx.limits
        target = ridge_mhz * (self.margin + self.extra_margin)
        target = max(target, self.floor_fraction * limits.default_max_mhz)
        snapped = limits.snap_up(target)
        if snapped >= limits.default_max_mhz:
            wanted = ridge_mhz * (self.margin + self.extra_margin)
            floored = wanted < limits.default_max_mhz
            why = self._entry_note() if floored else f"{ridge_mhz:.0f} MHz at or above boost"
            return Reason.COMPUTE, None, f"{what}: {why}: full boost", source
        return (
            Reason.RIDGE,
            snapped,
            f"{what}: ridge {ridge_mhz:.0f} MHz, locking {snapped} MHz",
            source,
        )

    def _entry_note(self) -> str:
        return (
            f"first-token floor {100 * self.floor_fraction:.0f}% of boost (new requests start "
            "here; a prefill would run at the lock until it is seen)"
        )

    def widen(self, ctx: TickContext, step: float = 0.05) -> None:
        """The latency guard tripped: add margin to estimates and move searched clocks up."""
        self.extra_margin = min(self.extra_margin + step, 0.5)
        self.search.widen(ctx.limits)


def _no_counters(ctx: TickContext) -> str:
    """Why the Counters source cannot decide on this GPU (the search decides instead)."""
    act = ctx.sample.activity
    if act is not None and act.period_s is not None and phase_activity(ctx.sample) is None:
        return (
            f"source Counters refused: pipe counters here average over {act.period_s:.0f} s "
            "(dcgm-exporter's collection interval; this GPU has no per-tick GPM counters), "
            "too long to find a phase's ridge: searching instead"
        )
    return "no pipe counters this tick"
