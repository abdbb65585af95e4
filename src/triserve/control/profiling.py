"""Ridge profiles: measure the lowest clock at which a stage's phase keeps its rate.

The Tri-serve paper profiles each stage's arithmetic intensity offline; `sweep` does the
equivalent with what a real node offers. While a stage serves traffic on one GPU it locks
that GPU at a series of SM clocks, and for each clock runs a pair of adjacent windows — one
at the boost clock, one at the clock under test — and records the serving engine's own
mean inter-token latency (decode) and time to first token (prefill) in each, plus power
from the energy counter. Pairs cancel slow changes of load. A phase's ridge is the lowest
clock from which every clock above it kept the phase within `max_loss_pct` of its paired
boost window. The GPU is handed back to the PMU on every path.

The reader and the waiter are injected: `triserve profile --sim` runs it on simulated time,
`triserve profile --nvml` on a real GPU with the engine's `/metrics` over HTTP.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from triserve.gpu.backend import GpuBackend
from triserve.telemetry import Histogram, ServingSnapshot

#: Reads the stage's serving metrics now.
Reader = Callable[[], ServingSnapshot]
#: Lets `seconds` pass (wall clock on a real GPU, simulated time in the simulator).
Waiter = Callable[[float], None]


@dataclass(frozen=True, slots=True)
class ClockPoint:
    """One clock under test and its paired boost window."""

    clock_mhz: int
    itl_s: float | None
    itl_boost_s: float | None
    ttft_s: float | None
    ttft_boost_s: float | None
    power_w: float
    power_boost_w: float

    def loss(self, phase: str) -> float | None:
        """Relative slowdown of `phase` (decode or prefill) against the paired boost window."""
        at, ref = (
            (self.itl_s, self.itl_boost_s)
            if phase == "decode"
            else (self.ttft_s, self.ttft_boost_s)
        )
        if at is None or ref is None or ref <= 0:
            return None
        return at / ref - 1.0


@dataclass(frozen=True, slots=True)
class RidgeProfile:
    """The result of one sweep: per-phase ridge clocks and every measured point."""

    stage: str
    boost_mhz: int
    ridges_mhz: dict[str, int]
    points: tuple[ClockPoint, ...]

    def entries(self) -> list[dict[str, object]]:
        """The policy's `spec.triServe.arithmeticIntensity.profile` entries."""
        return [
            {"stage": self.stage, "phase": phase, "ridgeMHz": mhz}
            for phase, mhz in sorted(self.ridges_mhz.items())
        ]


def sweep(
    backend: GpuBackend,
    gpu_index: int,
    stage: str,
    read: Reader,
    wait: Waiter,
    *,
    window_s: float = 10.0,
    points: int = 12,
    floor_fraction: float = 0.3,
    max_loss_pct: float = 0.5,
) -> RidgeProfile:
    """Sweep `points` clocks from boost down to `floor_fraction` of it; find each ridge."""
    clocks = sorted(backend.supported_sm_clocks_mhz(gpu_index))
    boost = backend.default_max_sm_clock_mhz(gpu_index)
    tested = _grid([c for c in clocks if floor_fraction * boost <= c < boost], points)
    results: list[ClockPoint] = []
    try:
        for clock in sorted(tested, reverse=True):
            backend.lock_sm_clocks(gpu_index, clocks[0], boost)
            ref = _window(backend, gpu_index, read, wait, window_s)
            backend.lock_sm_clocks(gpu_index, clocks[0], clock)
            at = _window(backend, gpu_index, read, wait, window_s)
            results.append(ClockPoint(clock, at[0], ref[0], at[1], ref[1], at[2], ref[2]))
    finally:
        backend.reset_sm_clocks(gpu_index)
    loss = max_loss_pct / 100.0
    ridges: dict[str, int] = {}
    for phase in ("decode", "prefill"):
        measured = [p for p in results if p.loss(phase) is not None]
        if not measured:
            continue
        ridge = boost
        for p in sorted(measured, key=lambda p: -p.clock_mhz):
            lost = p.loss(phase)
            assert lost is not None
            if lost > loss:
                break
            ridge = p.clock_mhz
        ridges[phase] = ridge
    return RidgeProfile(stage, boost, ridges, tuple(results))


def _grid(clocks: Sequence[int], n: int) -> list[int]:
    if len(clocks) <= n:
        return list(clocks)
    step = (len(clocks) - 1) / (n - 1)
    return sorted({clocks[round(i * step)] for i in range(n)})


def _window(
    backend: GpuBackend, gpu_index: int, read: Reader, wait: Waiter, window_s: float
) -> tuple[float | None, float | None, float]:
    """(mean ITL, mean TTFT, mean power) over one window after a short settle."""
    wait(min(1.0, 0.1 * window_s))
    start, e0, t0 = read(), backend.total_energy_mj(gpu_index), backend.sample(gpu_index)
    wait(window_s)
    end, e1, t1 = read(), backend.total_energy_mj(gpu_index), backend.sample(gpu_index)
    span_s = max(t1.timestamp_s - t0.timestamp_s, 1e-9)
    return (
        _mean(start.inter_token, end.inter_token),
        _mean(start.ttft, end.ttft),
        ((e1 - e0) / 1000.0 / span_s),
    )


def _mean(before: Histogram | None, after: Histogram | None) -> float | None:
    if before is None or after is None or after.upper_bounds_s != before.upper_bounds_s:
        return None
    d = after.minus(before)
    if d.count < 5 or d.sum_s <= 0 or math.isnan(d.sum_s):
        return None
    return d.sum_s / d.count
