"""A decode stage whose inter-token latency a test dictates (the serving side, not the GPU)."""

from __future__ import annotations

from triserve.telemetry import Histogram, ServingSnapshot, StageObservation

#: vLLM-like inter-token latency bucket bounds, in seconds.
BOUNDS_S = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, float("inf"))


class DecodeStage:
    """Cumulative inter-token histogram of one stage; `observe` adds `n` tokens and scrapes."""

    def __init__(self, name: str = "talker") -> None:
        self.name = name
        self.counts = [0.0] * len(BOUNDS_S)
        self.sum_s = 0.0
        self.total = 0.0

    def observe(self, now_s: float, latency_s: float, n: int = 40) -> StageObservation:
        i = next(k for k, b in enumerate(BOUNDS_S) if latency_s <= b)
        for k in range(i, len(BOUNDS_S)):
            self.counts[k] += n
        self.sum_s += latency_s * n
        self.total += n
        hist = Histogram(BOUNDS_S, tuple(self.counts), self.sum_s, self.total)
        snap = ServingSnapshot(now_s, 4, 0, 0.0, self.total, 0.0, inter_token=hist)
        return StageObservation(self.name, serving=snap)
