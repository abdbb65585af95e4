"""The latency guard: hand clocks back to the PMU when p99 latency inflates past the bound.

The policy bounds p99 latency (`spec.slo.maxLatencyIncreasePercent`). The guard compares,
per stage, the serving engines' own latency histograms (TTFT, inter-token, end-to-end; the
agent scrapes them) observed while triserve controlled the clocks with those observed while
the GPU ran at the PMU default. It needs no long stretch at default: every tick that ran at
default contributes — the online ridge search's reference windows, the agent's baseline
probes, parked stalls and compute phases at boost — and the reference keeps the last
`reference_s` seconds of them.

The test is on the p99 itself: take the reference p99 ``q``; under control, at most 1 % of
observations may exceed ``q·(1 + bound)``. The guard trips when the share above that line,
over the last `window_s` seconds of controlled observations, exceeds 1 % by more than three
binomial standard errors (so a handful of slow tokens in a small window cannot trip it). While
tripped (`hold_s`) the strategy hands the clock back to the PMU; each trip is counted.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

from triserve.telemetry import Histogram, ServingSnapshot, StageObservation

METRICS = ("ttft", "inter_token", "e2e")
#: The quantile the policy bounds.
QUANTILE = 0.99


def share_above(hist: Histogram, threshold_s: float) -> float:
    """Share of a histogram's observations above `threshold_s` (linear within buckets)."""
    if hist.count <= 0:
        return 0.0
    prev_bound, prev_count = 0.0, 0.0
    for bound, cum in zip(hist.upper_bounds_s, hist.cumulative_counts, strict=True):
        if threshold_s < bound:
            if math.isinf(bound):
                below = prev_count
            else:
                frac = (threshold_s - prev_bound) / (bound - prev_bound)
                below = prev_count + (cum - prev_count) * max(frac, 0.0)
            return max(1.0 - below / hist.count, 0.0)
        prev_bound, prev_count = bound, cum
    return 0.0


def merge(a: Histogram | None, b: Histogram) -> Histogram:
    """The sum of two histograms with the same buckets (`a` None: `b`)."""
    if a is None:
        return b
    counts = tuple(x + y for x, y in zip(a.cumulative_counts, b.cumulative_counts, strict=True))
    return Histogram(a.upper_bounds_s, counts, a.sum_s + b.sum_s, a.count + b.count)


class _Series:
    """Timestamped histogram deltas of one (stage, metric), trimmed to an age.

    Their sum is kept on insert and eviction: the guard reads it on every scrape.
    """

    def __init__(self, max_age_s: float) -> None:
        self.max_age_s = max_age_s
        self.items: deque[tuple[float, Histogram]] = deque()
        self._total: Histogram | None = None

    def add(self, now_s: float, hist: Histogram) -> None:
        if self._total is not None and self._total.upper_bounds_s != hist.upper_bounds_s:
            self.items.clear()  # the engine changed its buckets: start over
            self._total = None
        self.items.append((now_s, hist))
        total = merge(self._total, hist)
        while len(self.items) > 1 and now_s - self.items[0][0] > self.max_age_s:
            total = total.minus(self.items.popleft()[1])
        self._total = total

    def total(self) -> Histogram | None:
        return self._total


class SloGuard:
    """Trips when p99 latency under control exceeds the default-clock p99 by the bound."""

    def __init__(
        self,
        max_increase_pct: float,
        window_s: float = 20.0,
        hold_s: float = 10.0,
        min_count: float = 100.0,
        reference_s: float = 600.0,
    ) -> None:
        self.bound = max_increase_pct / 100.0
        self.window_s = window_s
        self.hold_s = hold_s
        self.min_count = min_count
        self.reference_s = reference_s
        self.trips = 0
        self.until_s: float | None = None
        self.message = ""
        self._last: dict[str, ServingSnapshot] = {}
        self._default_since_scrape: dict[str, bool] = {}
        self._ref: dict[tuple[str, str], _Series] = {}
        self._ctl: dict[tuple[str, str], _Series] = {}

    def active(self, now_s: float) -> bool:
        """True while the guard holds clocks at the PMU default."""
        return self.until_s is not None and now_s < self.until_s

    def update(self, now_s: float, stages: Sequence[StageObservation], at_default: bool) -> bool:
        """Feed one tick; return True when the guard trips on this tick.

        `at_default` says whether the period since the last tick ran at the PMU default.
        """
        fresh: list[str] = []
        for obs in stages:
            stage = obs.stage
            self._default_since_scrape[stage] = (
                self._default_since_scrape.get(stage, True) and at_default
            )
            snap = obs.serving
            if snap is None or self._last.get(stage) is snap:
                continue
            last = self._last.get(stage)
            self._last[stage] = snap
            default = self._default_since_scrape[stage]
            self._default_since_scrape[stage] = True
            if last is None:
                continue
            for metric in METRICS:
                delta = _delta(last, snap, metric)
                if delta is None:
                    continue
                key = (stage, metric)
                if default:
                    self._ref.setdefault(key, _Series(self.reference_s)).add(now_s, delta)
                else:
                    self._ctl.setdefault(key, _Series(self.window_s)).add(now_s, delta)
                    fresh.append(stage)
        if not fresh or self.active(now_s):
            return False
        for stage in set(fresh):
            for metric in METRICS:
                if self._violated(now_s, (stage, metric)):
                    self.trips += 1
                    self.until_s = now_s + self.hold_s
                    # Observations made while controlled are judged: start a fresh window.
                    self._ctl.clear()
                    return True
        return False

    def _violated(self, now_s: float, key: tuple[str, str]) -> bool:
        ref_series, ctl_series = self._ref.get(key), self._ctl.get(key)
        if ref_series is None or ctl_series is None:
            return False
        ref, ctl = ref_series.total(), ctl_series.total()
        if ref is None or ctl is None or ref.count < self.min_count:
            return False
        if ctl.count < self.min_count or ref.upper_bounds_s != ctl.upper_bounds_s:
            return False
        q = ref.quantile_s(QUANTILE)
        if q is None or q <= 0:
            return False
        line_s = q * (1.0 + self.bound)
        share = share_above(ctl, line_s)
        allowed = 1.0 - QUANTILE
        noise = 3.0 * math.sqrt(allowed * QUANTILE / ctl.count)
        if share <= allowed + noise:
            return False
        self.message = (
            f"{key[0]} {key[1]}: {100 * share:.1f}% of the last {self.window_s:.0f} s above "
            f"{line_s * 1000:.1f} ms (default-clock p99 {q * 1000:.1f} ms + "
            f"{100 * self.bound:.1f}%): backing off to the PMU default"
        )
        return True


def _delta(last: ServingSnapshot, snap: ServingSnapshot, metric: str) -> Histogram | None:
    now_h: Histogram | None = getattr(snap, metric)
    then_h: Histogram | None = getattr(last, metric)
    if now_h is None or then_h is None or now_h.upper_bounds_s != then_h.upper_bounds_s:
        return None
    d = now_h.minus(then_h)
    if d.count <= 0 or any(c < -1e-9 for c in d.cumulative_counts):
        return None  # nothing new, or a counter reset
    return d
