"""Component A: choose the clock from arithmetic intensity (A.I.).

Roofline: throughput ``Θ = min(η·f, β·AI)``; the ridge clock ``f* = β·AI/η`` is the lowest
clock with no throughput loss. With activity counters (DCGM DRAM_ACTIVE / SM_ACTIVE or NVML
GPM) the ridge follows directly from one sample: in a memory-bound phase DRAM is saturated
(dram_active ≈ 1) while the SMs are busy only ``f*/f`` of the time, so
``f* ≈ f · sm_active / dram_active``. That estimate corrects itself every tick: below the
ridge the SMs saturate and the ratio rises above one. Without counters the phase is read
from the serving counters (prompt vs generation tokens): decode-only windows are treated as
memory-bound and run at a conservative fraction of the boost clock that the SLO guard keeps
honest. Used by `triserve.control.triserve.TriServeStrategy`.
"""

from __future__ import annotations

from collections import deque

from triserve.control.decisions import Reason, TickContext
from triserve.control.settings import IntensitySource

#: Below this busy fraction of the sample period the activity ratio is not trusted.
MIN_BUSY = 0.1
#: Without counters, the share of the boost clock decode-only phases run at.
PHASE_DECODE_CLOCK_FRACTION = 0.72
#: Without counters, a prompt-token share above this marks a compute-bound (prefill) window.
PHASE_PREFILL_SHARE = 0.3
#: Ticks of ridge estimates kept; the highest recent one is used (a safety margin in time).
RIDGE_MEMORY_TICKS = 3


class IntensityEstimator:
    """Per-GPU A.I. state: recent ridge estimates and the phase-source fallback."""

    def __init__(
        self, source: IntensitySource, margin_pct: float, floor_fraction: float = 0.0
    ) -> None:
        self.source = source
        self.margin = 1.0 + margin_pct / 100.0
        self.floor_fraction = floor_fraction
        self._recent_mhz: deque[float] = deque(maxlen=RIDGE_MEMORY_TICKS)
        self.extra_margin = 0.0

    def decide(self, ctx: TickContext) -> tuple[Reason, int | None, str]:
        """(reason, clock ceiling or None for the PMU's boost, message) for a busy GPU."""
        activity = ctx.sample.activity
        if activity is not None and self.source is not IntensitySource.PHASE:
            return self._from_activity(
                ctx, activity.sm_active, activity.dram_active, activity.tensor_active
            )
        if self.source is IntensitySource.ACTIVITY:
            return Reason.DEFAULT, None, "no activity counters on this GPU: PMU default"
        return self._from_phase(ctx)

    def _from_activity(
        self, ctx: TickContext, sm: float, dram: float, tensor: float
    ) -> tuple[Reason, int | None, str]:
        busy = ctx.sample.utilization_gpu_pct / 100.0
        if busy < MIN_BUSY or dram < 1e-3:
            if self._recent_mhz:
                return self._ridge(ctx, self._recent_mhz[-1], sm, dram)
            return Reason.COMPUTE, None, "too little work this tick to read A.I.: full boost"
        # f* = f·sm/dram holds on both sides of the ridge: memory-bound, dram = 1 and
        # sm = f*/f; compute-bound, sm = 1 and dram = f/f*.
        ridge_mhz = ctx.sample.sm_clock_mhz * sm / dram
        self._recent_mhz.append(ridge_mhz)
        return self._ridge(ctx, ridge_mhz, sm, dram)

    def _ridge(
        self, ctx: TickContext, ridge_mhz: float, sm: float, dram: float
    ) -> tuple[Reason, int | None, str]:
        target = max(self._recent_mhz, default=ridge_mhz) * (self.margin + self.extra_margin)
        target = max(target, self.floor_fraction * ctx.limits.default_max_mhz)
        snapped = ctx.limits.snap_up(target)
        if snapped >= ctx.limits.default_max_mhz:
            return (
                Reason.COMPUTE,
                None,
                f"compute-bound (ridge {ridge_mhz:.0f} MHz at or above boost; sm {sm:.2f}, "
                f"dram {dram:.2f}): full boost",
            )
        return (
            Reason.RIDGE,
            snapped,
            f"memory-bound (dram {dram:.2f}, sm {sm:.2f} at {ctx.sample.sm_clock_mhz} MHz): "
            f"ridge {ridge_mhz:.0f} MHz, locking {snapped} MHz",
        )

    def _from_phase(self, ctx: TickContext) -> tuple[Reason, int | None, str]:
        share = ctx.signals.prefill_share
        if share is None or share > PHASE_PREFILL_SHARE:
            return Reason.COMPUTE, None, "prefill in the last scrape window: full boost"
        fraction = min(1.0, PHASE_DECODE_CLOCK_FRACTION + self.extra_margin)
        snapped = ctx.limits.snap_up(ctx.limits.default_max_mhz * fraction)
        if snapped >= ctx.limits.default_max_mhz:
            return Reason.COMPUTE, None, "decode ridge unknown and guarded up to boost"
        return (
            Reason.RIDGE,
            snapped,
            f"decode-only window (prompt share {share:.2f}): phase ridge {snapped} MHz",
        )

    def widen(self, step: float = 0.04) -> None:
        """Add safety margin after the SLO guard tripped (bounded)."""
        self.extra_margin = min(self.extra_margin + step, 0.4)
