"""The SLO guard: back clocks off toward default when serving latency inflates.

`LatencyTracker` keeps each stage's latency histograms (TTFT, inter-token, end-to-end) for
a sliding window and reports windowed means with their standard errors (from the bucket
spread). `SloGuard` learns a baseline from windows spent at default clocks and trips when a
window's inflation exceeds the policy bound by more than its noise; while tripped the
strategy hands clocks back to the PMU (reason ``slo-guard``). Used by Tri-serve and by the
slo-dvfs baseline.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from triserve.telemetry import Histogram, ServingSnapshot, StageObservation

_METRICS = ("ttft", "inter_token", "e2e")


@dataclass(frozen=True, slots=True)
class WindowStat:
    """Mean latency over a window, its standard error, and how many observations it holds."""

    mean_s: float
    stderr_s: float
    count: float


def window_stat(hist: Histogram) -> WindowStat | None:
    """Mean and standard error of a windowed (already differenced) histogram."""
    if hist.count <= 0:
        return None
    mean = hist.sum_s / hist.count
    second = 0.0
    prev_bound, prev_count = 0.0, 0.0
    for bound, cum in zip(hist.upper_bounds_s, hist.cumulative_counts, strict=True):
        mid = prev_bound if math.isinf(bound) else 0.5 * (prev_bound + bound)
        second += (cum - prev_count) * mid * mid
        prev_bound, prev_count = (prev_bound if math.isinf(bound) else bound), cum
    var = max(second / hist.count - mean * mean, 0.0)
    return WindowStat(mean, math.sqrt(var / hist.count), hist.count)


class LatencyTracker:
    """Sliding-window latency per (stage, metric) from cumulative scrapes."""

    def __init__(self, window_s: float = 8.0) -> None:
        self.window_s = window_s
        self._history: dict[str, deque[ServingSnapshot]] = {}

    def observe(self, stages: Sequence[StageObservation]) -> dict[tuple[str, str], WindowStat]:
        """Window stats for each stage whose scrape changed since the last call."""
        out: dict[tuple[str, str], WindowStat] = {}
        for obs in stages:
            snap = obs.serving
            if snap is None:
                continue
            hist = self._history.setdefault(obs.stage, deque())
            if hist and hist[-1] is snap:
                continue
            hist.append(snap)
            while len(hist) > 2 and snap.timestamp_s - hist[1].timestamp_s >= self.window_s:
                hist.popleft()
            first = hist[0]
            if snap.timestamp_s - first.timestamp_s < 0.5 * self.window_s:
                continue
            for metric in _METRICS:
                now_h: Histogram | None = getattr(snap, metric)
                then_h: Histogram | None = getattr(first, metric)
                if now_h is None or then_h is None:
                    continue
                stat = window_stat(now_h.minus(then_h))
                if stat is not None:
                    out[(obs.stage, metric)] = stat
        return out


class SloGuard:
    """Trips when windowed latency inflates past the bound; holds default while tripped."""

    def __init__(
        self,
        max_increase_pct: float,
        window_s: float = 8.0,
        hold_s: float = 6.0,
        min_count: float = 20.0,
    ) -> None:
        self.bound = max_increase_pct / 100.0
        self.hold_s = hold_s
        self.min_count = min_count
        self.tracker = LatencyTracker(window_s)
        self.baseline: dict[tuple[str, str], WindowStat] = {}
        self.trips = 0
        self.until_s = -1e9
        self.message = ""
        self._last_controlled_s = -1e9

    def note_controlled(self, now_s: float) -> None:
        """Record that clocks were away from default at `now_s` (no baseline from this window)."""
        self._last_controlled_s = now_s

    def active(self, now_s: float) -> bool:
        """True while the guard holds clocks back toward default."""
        return now_s < self.until_s

    def update(self, now_s: float, stages: Sequence[StageObservation]) -> bool:
        """Feed this tick's observations; return True when the guard just tripped."""
        stats = self.tracker.observe(stages)
        if not stats:
            return False
        at_default = now_s - self._last_controlled_s > self.tracker.window_s
        tripped = False
        for key, stat in stats.items():
            if stat.count < self.min_count:
                continue
            base = self.baseline.get(key)
            if at_default:
                self.baseline[key] = stat if base is None else _blend(base, stat)
                continue
            if base is None or self.active(now_s):
                continue
            noise = 2.0 * math.hypot(stat.stderr_s, base.stderr_s)
            excess_s = stat.mean_s - base.mean_s * (1.0 + self.bound)
            if excess_s > noise:
                inflation = 100.0 * (stat.mean_s / base.mean_s - 1.0)
                self.message = (
                    f"{key[0]} {key[1]} latency +{inflation:.1f}% over its default-clock "
                    f"baseline (bound {100 * self.bound:.1f}%): backing off to default"
                )
                tripped = True
        if tripped:
            self.trips += 1
            self.until_s = now_s + self.hold_s
        return tripped


def _blend(old: WindowStat, new: WindowStat, weight: float = 0.3) -> WindowStat:
    """Exponentially weighted baseline update."""
    return WindowStat(
        old.mean_s + weight * (new.mean_s - old.mean_s),
        old.stderr_s + weight * (new.stderr_s - old.stderr_s),
        old.count + weight * (new.count - old.count),
    )
