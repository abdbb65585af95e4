"""Windowed latency statistics from cumulative serving histograms.

`LatencyTracker` keeps each stage's latency histograms (TTFT, inter-token, end-to-end) for a
sliding window and reports windowed means with their standard errors (from the bucket
spread). Used by the latency-feedback baselines in `triserve.control.baselines`.
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
