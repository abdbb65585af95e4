"""ORACLE ONLY: the per-phase no-loss lookahead — future phases, the controller's own rules.

!!! No production controller can do this. !!!
This is *not* an optimum: it shares Tri-serve's ridge floor and its per-phase "no loss"
rule, so it bounds what Tri-serve's own design could reach with perfect phase knowledge.
The bench's real upper bound is `triserve.bench.optimum`. `LookaheadStrategy` reads
`Simulation.oracle_view()` (upcoming phases per GPU) and the phase the GPU runs right now,
which is simulator-internal knowledge. It lives in `triserve.bench` because
`triserve.control` may not import the simulator. Per tick it:

- idle with no work due before the clock could come back: lowest clock (``stall``);
- idle with work due: the clock that work needs (pre-warmed exactly in time);
- busy: the lowest supported clock whose round time is within `max_slowdown` of the round
  time at the boost clock, evaluated on the exact kernels (``ridge`` below boost, else
  ``compute``);
- thermal: the same predictive governor as Tri-serve's T, since the lookahead knows no more
  about temperature than the physics it is fitted to.
"""

from __future__ import annotations

import bisect

from triserve.control import ControlSettings, Decision, Reason, TickContext
from triserve.control.decisions import DeviceLimits
from triserve.control.thermal import ThermalGovernor
from triserve.sim import ORACLE_WARNING, DeviceProfile, Phase, Simulation

#: Allowed per-phase slowdown relative to the boost clock (well inside a +1% latency SLO).
MAX_SLOWDOWN = 0.005
#: How far ahead the lookahead looks for upcoming work, in seconds.
HORIZON_S = 2.0


class LookaheadStrategy:
    """ORACLE ONLY — chooses clocks with perfect knowledge of the simulated GPU's phases."""

    name = "lookahead"
    warning = ORACLE_WARNING

    def __init__(self, sim: Simulation, gpu_index: int, settings: ControlSettings) -> None:
        self.sim = sim
        self.gpu_index = gpu_index
        self.settings = settings
        self.thermal = ThermalGovernor(settings.thermal_headroom_c)
        self._clock_cache: dict[Phase, int] = {}

    def decide(self, ctx: TickContext) -> Decision:
        """Choose the clock from the current and upcoming phases (ORACLE ONLY)."""
        cap = self.thermal.update(ctx)
        decision = self._base(ctx)
        target = decision.target_sm_clock_mhz
        if cap is not None and (target is None or target > cap):
            return Decision(cap, Reason.THERMAL, f"ORACLE: {self.thermal.message}")
        return decision

    def _base(self, ctx: TickContext) -> Decision:
        gpu = self.sim.gpus[self.gpu_index]
        if gpu.phase is not None:
            return self._for_phase(ctx, gpu.phase)
        view = self.sim.oracle_view(HORIZON_S)
        next_s = view.next_busy_s(self.gpu_index)
        lead_s = ctx.dt_s + 2.0 * self.sim.scenario.pmu.clock_change_latency_s
        if next_s is None or next_s - ctx.now_s > lead_s:
            return Decision(ctx.limits.min_mhz, Reason.STALL, "ORACLE: no work due: lowest clock")
        return Decision(None, Reason.DEFAULT, "ORACLE: work due within a tick: pre-warmed")

    def _for_phase(self, ctx: TickContext, phase: Phase) -> Decision:
        clock = self._clock_cache.get(phase)
        if clock is None:
            profile = self.sim.gpus[self.gpu_index].profile
            # The same floor as Tri-serve: phases change between ticks for the lookahead too.
            floor_mhz = self.settings.ridge_floor_fraction * ctx.limits.default_max_mhz
            clock = no_loss_clock_mhz(profile, phase, ctx.limits, floor_mhz)
            if len(self._clock_cache) > 4096:
                self._clock_cache.clear()
            self._clock_cache[phase] = clock
        if clock >= ctx.limits.default_max_mhz:
            return Decision(None, Reason.COMPUTE, f"ORACLE: {phase.kind} needs boost")
        return Decision(clock, Reason.RIDGE, f"ORACLE: {phase.kind} no-loss clock {clock} MHz")


def no_loss_clock_mhz(
    profile: DeviceProfile,
    phase: Phase,
    limits: DeviceLimits,
    floor_mhz: float = 0.0,
    max_slowdown: float = MAX_SLOWDOWN,
) -> int:
    """Lowest allowed clock at which `phase` keeps within `max_slowdown` of boost speed.

    Not below `floor_mhz`; evaluated on the exact kernels (ORACLE ONLY).
    """
    clocks = limits.clocks_mhz
    budget_s = phase.at(profile, limits.default_max_mhz).round_s * (1.0 + max_slowdown)
    lo, hi = bisect.bisect_left(clocks, floor_mhz), len(clocks) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if phase.at(profile, clocks[mid]).round_s <= budget_s:
            hi = mid
        else:
            lo = mid + 1
    return clocks[lo]


def lookahead_factory(
    sim: Simulation, gpu_index: int, settings: ControlSettings
) -> LookaheadStrategy:
    """`StrategySpec.factory` for the lookahead row (ORACLE ONLY)."""
    return LookaheadStrategy(sim, gpu_index, settings)
