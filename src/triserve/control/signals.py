"""Derive per-tick serving signals for one GPU from its samples and stage observations.

`SignalTracker` is run by `ControlLoop` every tick, before the strategy. It sees only what
the node agent sees: the GPU sample of this tick and each stage's latest scrape (stale by up
to one scrape interval). Rates are computed when a scrape changes, so a tick with no new
scrape costs a few comparisons. A GPU hosting several stages is stalled only when all are.

A stage whose engine sends hints (`StageObservation.hint`, fresh) speaks for itself: its
busy/idle state and queue depth replace the scrape's running/waiting, and when every stage
on the GPU has a fresh hint their word replaces the GPU's utilisation too (a sample covers
the whole period since the last tick; the hint says what is true now). An upstream hint's
hand-off starts the pre-warm window as a finished upstream request does in the scrapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from triserve.control.decisions import StageSignals
from triserve.control.phases import (
    IDLE_BUSY_FRACTION,
    busy_fraction,
    counter_delta,
    phase_activity,
)
from triserve.gpu.backend import GpuSample
from triserve.telemetry import ServingSnapshot, StageObservation

#: Seconds a hand-off is expected to take to reach the downstream stage after the upstream
#: finishes a request; within this window the downstream GPU pre-warms its clock.
HANDOFF_PREWARM_S = 0.6


@dataclass(slots=True)
class _StageRates:
    """Rate state of one stage, updated whenever its scrape changes."""

    last: ServingSnapshot | None = None
    prefill_share: float | None = None
    upstream_finished: float = -1.0
    upstream_progress_s: float | None = None


class SignalTracker:
    """Turns samples and stage observations into `StageSignals`, one GPU at a time."""

    def __init__(self) -> None:
        self._stages: dict[str, _StageRates] = {}

    def update(
        self, now_s: float, sample: GpuSample, stages: Sequence[StageObservation]
    ) -> StageSignals:
        """Signals for this tick; call once per tick with the GPU's stages."""
        gpu_active = busy_fraction(sample) >= IDLE_BUSY_FRACTION
        activity = phase_activity(sample)
        if activity is not None and activity.sm_active >= IDLE_BUSY_FRACTION:
            gpu_active = True
        has_work = False
        upstream_active = False
        imminent = False
        running = 0
        hinted = 0
        shares: list[float] = []
        for obs in stages:
            rates = self._stages.get(obs.stage)
            if rates is None:
                rates = self._stages[obs.stage] = _StageRates()
            snap = obs.serving
            hint = obs.fresh_hint(now_s)
            if hint is not None:
                hinted += 1
                has_work = has_work or hint.has_work
                running += hint.running if hint.running is not None else int(hint.busy)
            elif snap is not None:
                running += snap.running
                if snap.running > 0 or snap.waiting > 0:
                    has_work = True
            if snap is not None:
                if snap is not rates.last:
                    self._refresh_rates(rates, snap)
                if rates.prefill_share is not None:
                    shares.append(rates.prefill_share)
            if self._upstream(now_s, rates, obs):
                upstream_active = True
            progress_s = rates.upstream_progress_s
            if progress_s is not None and now_s - progress_s <= HANDOFF_PREWARM_S:
                imminent = True
        all_hinted = bool(stages) and hinted == len(stages)
        busy = has_work if all_hinted else gpu_active or has_work
        share = max(shares) if shares else None
        return StageSignals(
            busy=busy,
            stalled=not busy and bool(stages),
            upstream_active=upstream_active,
            work_imminent=imminent,
            prefill_share=share,
            running=running,
        )

    @staticmethod
    def _refresh_rates(rates: _StageRates, snap: ServingSnapshot) -> None:
        last = rates.last
        rates.last = snap
        if last is None or snap.timestamp_s <= last.timestamp_s:
            return
        d_prompt = counter_delta(snap.prompt_tokens_total, last.prompt_tokens_total)
        d_gen = counter_delta(snap.generation_tokens_total, last.generation_tokens_total)
        total = d_prompt + d_gen
        rates.prefill_share = None if total <= 0 else d_prompt / total

    @staticmethod
    def _upstream(now_s: float, rates: _StageRates, obs: StageObservation) -> bool:
        """True when an upstream stage works; notes when it just finished a request."""
        active = False
        finished = 0.0
        for hint in obs.upstream_hints:
            if not hint.fresh(now_s):
                continue
            active = active or hint.has_work
            handoff_s = hint.handoff_s
            if handoff_s is not None and (
                rates.upstream_progress_s is None or handoff_s > rates.upstream_progress_s
            ):
                rates.upstream_progress_s = handoff_s
        for up in obs.upstream_serving:
            finished += up.requests_finished_total
            if up.running > 0 or up.waiting > 0:
                active = True
        if obs.upstream_serving:
            if rates.upstream_finished >= 0 and finished > rates.upstream_finished:
                rates.upstream_progress_s = now_s
            rates.upstream_finished = finished
        return active
