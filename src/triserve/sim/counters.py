"""Activity counters of a simulated GPU, with the meaning the real counters have.

Called by `triserve.sim.physics` (per-phase counter rates, integrated over time by
`GpuModel`) and by `triserve.sim.backend.SimBackend` and `triserve.sim.simulation.Simulation`
(what an NVML, GPM or dcgm-exporter read returns). docs/calibration.md gives the definitions
and their public sources; in short:

- GR_ENGINE_ACTIVE / NVML utilisation: share of time any kernel runs;
- SM_ACTIVE / GPM SM_UTIL: share of cycles an SM holds at least one warp, stalled or not,
  averaged over SMs, so a memory-bound kernel that fills the GPU reads close to 1;
- SM_OCCUPANCY: resident warps over the maximum, averaged over SMs and time;
- PIPE_TENSOR_ACTIVE / PIPE_FP32_ACTIVE: achieved FLOP/s over the pipe's peak at the
  current clock (kernel inefficiency is not busy time);
- DRAM_ACTIVE / GPM DRAM_BW_UTIL: achieved bandwidth share, which in practice tops out
  near 0.8 even for a saturating kernel.

``counters: ideal`` keeps the older identities (SM activity = compute time / busy time,
DRAM activity = memory time / busy time) as an explicitly named reference. Nothing here
draws from a global random generator: noise is a pure function of the seed and the read.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

__all__ = [
    "COUNTER_NAMES",
    "DRAM",
    "FP32",
    "GR",
    "IDLE_COUNTERS",
    "N_COUNTERS",
    "OCC",
    "SM",
    "TENSOR",
    "PeriodTrack",
    "Snapshot",
    "noisy",
    "stream_id",
]

#: Order of the integrated counters. Index 0 is the busy (any kernel running) share. The
#: index names below are the one definition; `triserve.sim.backend` reads counters by them.
COUNTER_NAMES: tuple[str, ...] = ("gr_engine", "sm", "occupancy", "tensor", "fp32", "dram")
N_COUNTERS = len(COUNTER_NAMES)
GR, SM, OCC, TENSOR, FP32, DRAM = range(N_COUNTERS)
IDLE_COUNTERS: tuple[float, ...] = (0.0,) * N_COUNTERS


@dataclass(frozen=True, slots=True)
class Snapshot:
    """State of a GPU at one collection boundary: cumulative counter integrals and gauges."""

    t_s: float
    integrals_s: tuple[float, ...]
    energy_j: float
    clock_mhz: int
    power_w: float
    temperature_c: float


class PeriodTrack:
    """Snapshots at fixed boundaries ``k · period_s``: the latest two completed ones.

    A driver utilisation sample or a dcgm-exporter collection reports the last *completed*
    period, not the time since the caller's previous read; this keeps exactly what such a
    read needs. `GpuModel.advance` calls `cross` for every constant segment.
    """

    __slots__ = ("index", "last", "period_s", "prev")

    def __init__(self, period_s: float, start: Snapshot) -> None:
        if period_s <= 0:
            raise ValueError(f"period_s must be positive, got {period_s}")
        self.period_s = period_s
        self.last = start
        self.prev: Snapshot | None = None
        self.index = 0  # boundary index of `last`

    def next_boundary_s(self) -> float:
        """Time of the next boundary after `last`."""
        return (self.index + 1) * self.period_s

    def cross(
        self,
        now_s: float,
        dt_s: float,
        integrals_s: list[float],
        rates: tuple[float, ...],
        energy_j: float,
        power_w: float,
        clock_mhz: int,
        temperature_c: float,
    ) -> None:
        """Record the boundaries inside the segment (now_s, now_s + dt_s] (constant rates)."""
        end_s = now_s + dt_s
        k_hi = math.floor(end_s / self.period_s + 1e-9)
        if k_hi <= self.index:
            return

        def snap(k: int) -> Snapshot:
            t = k * self.period_s
            off = max(t - now_s, 0.0)
            ints = tuple(integrals_s[i] + rates[i] * off for i in range(N_COUNTERS))
            return Snapshot(t, ints, energy_j + power_w * off, clock_mhz, power_w, temperature_c)

        self.prev = snap(k_hi - 1) if k_hi - 1 > self.index else self.last
        self.last = snap(k_hi)
        self.index = k_hi

    def averages(self) -> tuple[float, ...]:
        """Counter averages over the last completed period (zeros before the first)."""
        prev, last = self.prev, self.last
        if prev is None:
            return IDLE_COUNTERS
        span = last.t_s - prev.t_s
        return tuple(
            min(max((last.integrals_s[i] - prev.integrals_s[i]) / span, 0.0), 1.0)
            for i in range(N_COUNTERS)
        )


_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """SplitMix64 finaliser: a fast, well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def stream_id(*key: object) -> int:
    """A stable 64-bit id for a noise stream (seed, GPU, source, counter).

    The same in every process, unlike ``hash`` of a string.
    """
    return _mix64(zlib.crc32(":".join(str(k) for k in key).encode()))


def noisy(values: tuple[float, ...], sd: float, stream: int, index: int) -> tuple[float, ...]:
    """`values` with multiplicative Gaussian noise of relative sd `sd`, clipped to [0, 1].

    Deterministic in (`stream`, `index`, position), so a run replays exactly and no two
    counters or reads share a draw. An idle counter stays exactly 0, as real ones do.
    """
    if sd <= 0:
        return tuple(min(max(v, 0.0), 1.0) for v in values)
    base = _mix64(stream ^ _mix64(index))
    out = []
    for pos, v in enumerate(values):
        if v <= 0:
            out.append(0.0)
            continue
        bits = _mix64(base + pos)
        u1 = ((bits >> 32) + 0.5) / 4294967296.0
        u2 = (bits & 0xFFFFFFFF) / 4294967296.0
        z = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)  # Box-Muller
        out.append(min(max(v * (1.0 + sd * z), 0.0), 1.0))
    return tuple(out)
