"""The first-token floor: how deep a GPU that takes new requests may lock its decode clock.

Used by `triserve.control.intensity.IntensityEstimator` (component A) in the policy's
Relative SLO mode. A pipeline's entry stage (a stage with no upstream: the first to see a
request) starts each new request's prefill whenever it arrives, often while the GPU decodes
at a ridge lock. The controller sees the prefill only some time ``δ`` later — the next tick
where the GPU has per-tick pipe counters (GPM), the next serving scrape where it has not —
and then needs about a tick more for the clock to rise. Until then the prefill runs at the
lock, ``f_lock / f_boost = r`` of the boost clock, and its compute-bound time stretches by
``1/r``: a first token up to ``δ · (1/r - 1)`` later. For the p99 TTFT to stay within the
policy's bound ``b``, ``δ · (1/r - 1) <= b · TTFT_p99``, so

    r >= 1 / (1 + b · TTFT_p99 / δ).

A prefill is compute-bound and often pinned at the power limit, where the PMU runs it below
boost anyway (`prefill_ratio`: the clock seen on prefill ticks at the PMU default, over
boost); a lock costs only what it takes below that clock, so the floor is
``prefill_ratio / (1 + b · TTFT_p99 / δ)``.

TTFT_p99 is read from the entry stage's own TTFT histogram (all of it: while too few
requests finished, `MIN_FIRST_TOKENS`, the floor is the boost clock). On a GPU with GPM a
tick is short next to a first token, and the floor is low; on one without (an A100, an
L40S with dcgm-exporter's defaults) half a second of scrape interval can cost more than the
whole bound, and the floor is close to boost. GPUs that host no entry stage have no floor.
"""

from __future__ import annotations

from collections.abc import Sequence

from triserve.control.phases import phase_activity
from triserve.gpu.backend import GpuSample
from triserve.telemetry import StageObservation

#: First tokens an entry stage must have reported before its p99 is trusted.
MIN_FIRST_TOKENS = 10.0
#: The scrape period assumed until two scrapes give it (the agent's default, seconds).
DEFAULT_SCRAPE_S = 0.5
#: Weight of each new prefill tick in the prefill clock's running mean.
PREFILL_ALPHA = 0.05


class FirstTokenFloor:
    """Per-GPU floor of a decode lock, as a fraction of boost, that keeps p99 TTFT in bound."""

    def __init__(self, bound_pct: float) -> None:
        self.bound = bound_pct / 100.0
        self.scrape_s = DEFAULT_SCRAPE_S
        self.fraction = 0.0
        #: The prefill's clock at the PMU default over boost (1.0 until seen).
        self.prefill_ratio = 1.0
        self._prefill_seen = False
        self._last_ts: dict[str, float] = {}

    def observe_prefill(self, clock_mhz: int, boost_mhz: int) -> None:
        """A prefill tick that ran at the PMU default: its clock shows the power-limited one."""
        ratio = min(clock_mhz / boost_mhz, 1.0) if boost_mhz > 0 else 1.0
        if not self._prefill_seen:
            self.prefill_ratio, self._prefill_seen = ratio, True
        else:
            self.prefill_ratio += PREFILL_ALPHA * (ratio - self.prefill_ratio)

    def update(self, sample: GpuSample, stages: Sequence[StageObservation], tick_s: float) -> float:
        """The floor for this tick (0.0: no entry stage here, 1.0: no lock below boost)."""
        entries = [o for o in stages if not o.upstream]
        for o in entries:
            snap = o.serving
            if snap is None:
                continue
            last = self._last_ts.get(o.stage)
            if last is not None and snap.timestamp_s > last:
                self.scrape_s = 0.8 * self.scrape_s + 0.2 * (snap.timestamp_s - last)
            self._last_ts[o.stage] = snap.timestamp_s
        if not entries:
            self.fraction = 0.0
            return self.fraction
        ttft_s = [
            q
            for o in entries
            if o.serving is not None
            and o.serving.ttft is not None
            and o.serving.ttft.count >= MIN_FIRST_TOKENS
            and (q := o.serving.ttft.quantile_s(0.99)) is not None
        ]
        if not ttft_s:
            self.fraction = 1.0
            return self.fraction
        per_tick = phase_activity(sample) is not None
        delay_s = (tick_s if per_tick else self.scrape_s) + tick_s
        self.fraction = self.prefill_ratio / (1.0 + self.bound * min(ttft_s) / delay_s)
        return self.fraction
