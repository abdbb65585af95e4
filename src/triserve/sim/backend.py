"""`SimBackend`: the `GpuBackend` over a `Simulation`'s simulated GPUs.

Created by `triserve.sim.simulation.Simulation` itself (`sim.backend`) and handed explicitly
to controllers, the node agent (through `triserve.simnode`), the profiler and benchmarks in
place of `triserve.gpu.nvml.NvmlBackend` — never chosen through a module-global. It behaves
like NVML: setters validate their arguments the way the driver does, a backend built with
``privileged=False`` refuses setters like an unprivileged container, a GPU marked lost raises
`GpuLostError`. Reads carry the counters' documented meanings (docs/calibration.md):
utilisation is the driver's last completed sample period as an integer percent; activity is
GPM (Hopper and newer only, None elsewhere, like NVML) averaged since the previous read under
the same key, None on the first read as NVML needs two samples; every counter carries seeded
noise. A scenario with ``counters: ideal`` gets the older exact per-read averages instead,
for a reference row. `triserve.sim.metrics` renders `dcgm_values` as dcgm-exporter text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from triserve.gpu.backend import (
    Activity,
    ClockEventReason,
    GpuIdentity,
    GpuInvalidArgumentError,
    GpuLostError,
    GpuPermissionError,
    GpuSample,
    GpuUnavailableError,
    PowerLimitConstraints,
    ThermalThresholds,
)
from triserve.sim.counters import DRAM, FP32, GR, OCC, SM, TENSOR, noisy, stream_id
from triserve.sim.physics import GpuModel
from triserve.sim.scenario import Scenario

__all__ = ["DcgmValues", "SimBackend", "SimulatedGpus"]

_PERMISSION_HINT = "run the agent as root or add CAP_SYS_ADMIN to its container"


@dataclass(frozen=True, slots=True)
class DcgmValues:
    """One GPU's values as dcgm-exporter last collected them (activity as fractions)."""

    sm_clock_mhz: int
    mem_clock_mhz: int
    temperature_c: float
    power_w: float
    energy_mj: float
    util_pct: float
    counters: tuple[float, ...]

    @property
    def gr_engine_active(self) -> float:
        """GR_ENGINE_ACTIVE."""
        return self.counters[GR]

    @property
    def sm_active(self) -> float:
        """SM_ACTIVE."""
        return self.counters[SM]

    @property
    def sm_occupancy(self) -> float:
        """SM_OCCUPANCY."""
        return self.counters[OCC]

    @property
    def tensor_active(self) -> float:
        """PIPE_TENSOR_ACTIVE."""
        return self.counters[TENSOR]

    @property
    def fp32_active(self) -> float:
        """PIPE_FP32_ACTIVE."""
        return self.counters[FP32]

    @property
    def dram_active(self) -> float:
        """DRAM_ACTIVE."""
        return self.counters[DRAM]


class SimulatedGpus(Protocol):
    """What the backend reads of the simulation driving it (`Simulation` provides it).

    Named here so that this module needs only the GPU models, not the simulation that owns
    them: `Simulation` builds its backend, so importing it back would be a cycle.
    """

    @property
    def gpus(self) -> Sequence[GpuModel]:
        """The simulated GPUs, by index."""
        ...

    @property
    def scenario(self) -> Scenario:
        """The scenario (its ``telemetry`` section sets counter noise and ideal mode)."""
        ...

    @property
    def seed(self) -> int:
        """The run's seed, from which every noise stream derives."""
        ...

    def on_actuation(self, g: int) -> None:
        """Called after a setter changed GPU `g`, so the simulation re-plans it."""
        ...


class SimBackend:
    """A GpuBackend whose GPUs are the simulation's `GpuModel`s (indices 0..n-1)."""

    #: The simulated GPU's lock is state the backend reads, as a driver with a getter would.
    reads_locks = True

    def __init__(self, sim: SimulatedGpus, *, privileged: bool = True, host_seed: int = 0) -> None:
        self._sim = sim
        self.privileged = privileged
        self._lost: set[int] = set()
        # Per (read key, GPU): time, counter integrals and read count at the previous read.
        self._windows: dict[tuple[str, int], tuple[float, tuple[float, ...], int]] = {}
        self._host_seed = host_seed
        tel = sim.scenario.telemetry
        self.ideal = tel.counters == "ideal"
        self.noise_sd = 0.0 if self.ideal else tel.noise_sd
        self._streams: dict[tuple[int, str], int] = {}
        # Utilisation and DCGM values change only at collection boundaries: cache per index.
        self._util_cache: dict[int, tuple[int, float]] = {}
        self._dcgm_cache: dict[int, tuple[int, tuple[float, ...]]] = {}

    # ------------------------------------------------------------------ helpers
    def _gpu(self, index: int) -> GpuModel:
        if not 0 <= index < len(self._sim.gpus):
            raise GpuUnavailableError(
                f"GPU index {index} not found; this node has {len(self._sim.gpus)} GPUs"
            )
        if index in self._lost:
            raise GpuLostError(f"GPU {index} is lost (fell off the bus); reboot the node")
        return self._sim.gpus[index]

    def _setter(self, index: int) -> GpuModel:
        gpu = self._gpu(index)
        if not self.privileged:
            raise GpuPermissionError(f"setting clocks/power on GPU {index}: {_PERMISSION_HINT}")
        return gpu

    def mark_lost(self, index: int) -> None:
        """Make every later call for GPU `index` raise GpuLostError (fault injection)."""
        self._lost.add(index)

    # ------------------------------------------------------------------ reads
    def device_count(self) -> int:
        """Number of simulated GPUs."""
        return len(self._sim.gpus)

    def identity(self, index: int) -> GpuIdentity:
        """Stable fake UUID and PCI bus id derived from the index."""
        gpu = self._gpu(index)
        uuid = f"GPU-{self._host_seed:08x}-5157-4e47-8000-{index:012x}"
        return GpuIdentity(
            index, uuid, gpu.profile.name, f"00000000:{0x18 + index * 0x10:02X}:00.0"
        )

    def supported_sm_clocks_mhz(self, index: int) -> tuple[int, ...]:
        """All settable SM clocks, ascending."""
        return self._gpu(index).clocks_mhz

    def default_max_sm_clock_mhz(self, index: int) -> int:
        """Max boost clock."""
        return self._gpu(index).profile.max_clock_mhz

    def sm_clock_mhz(self, index: int) -> int:
        """Current SM clock."""
        return self._gpu(index).clock_mhz

    def mem_clock_mhz(self, index: int) -> int:
        """Memory clock (fixed in the simulator)."""
        return self._gpu(index).profile.mem_clock_mhz

    def locked_sm_clocks_mhz(self, index: int) -> tuple[int, int] | None:
        """The lock last applied through this backend, or None."""
        return self._gpu(index).lock

    def power_limit_constraints_mw(self, index: int) -> PowerLimitConstraints:
        """Power-limit range and default in mW."""
        p = self._gpu(index).profile
        return PowerLimitConstraints(
            round(p.power_limit_min_w * 1000),
            round(p.power_limit_max_w * 1000),
            round(p.power_limit_default_w * 1000),
        )

    def power_limit_mw(self, index: int) -> int:
        """Enforced power limit in mW."""
        return round(self._gpu(index).power_limit_w * 1000)

    def power_usage_mw(self, index: int) -> int:
        """Instantaneous board power in mW."""
        return round(self._gpu(index).power_w * 1000)

    def total_energy_mj(self, index: int) -> int:
        """Monotone energy counter in mJ."""
        return int(self._gpu(index).energy_j * 1000)

    def temperature_c(self, index: int) -> float:
        """Core temperature in °C."""
        return self._gpu(index).temperature_c

    def thermal_thresholds_c(self, index: int) -> ThermalThresholds:
        """Absolute shutdown / slowdown / max-operating temperatures."""
        p = self._gpu(index).profile
        return ThermalThresholds(p.shutdown_c, p.slowdown_c, p.max_operating_c)

    def clock_event_reasons(self, index: int) -> ClockEventReason:
        """Current clock-event reason bits."""
        return self._gpu(index).reasons

    def _since_last(self, index: int, key: str) -> tuple[tuple[float, ...] | None, int]:
        """Counter averages since the previous read under `key`, and the count of reads.

        The averages are None on the first read; the count is of reads under `key` before.
        """
        gpu = self._gpu(index)
        now = (gpu.now_s, tuple(gpu.integrals_s))
        prev = self._windows.get((key, index))
        count = prev[2] + 1 if prev is not None else 0
        self._windows[(key, index)] = (*now, count)
        if prev is None or now[0] - prev[0] <= 1e-9:
            return None, count
        span = now[0] - prev[0]
        avg = tuple(
            min(max((a - b) / span, 0.0), 1.0) for a, b in zip(now[1], prev[1], strict=True)
        )
        return avg, count

    def _noisy(
        self, values: tuple[float, ...], index: int, source: str, read: int
    ) -> tuple[float, ...]:
        """`values` with this run's seeded noise for GPU `index`, `source`, read number."""
        stream = self._streams.get((index, source))
        if stream is None:
            stream = self._streams[(index, source)] = stream_id(self._sim.seed, index, source)
        return noisy(values, self.noise_sd, stream, read)

    def utilization_gpu_pct(self, index: int) -> float:
        """Percent of the driver's last completed sample period in which a kernel ran."""
        return self._util_pct(index, "util")

    def _util_pct(self, index: int, key: str) -> float:
        gpu = self._gpu(index)
        if self.ideal:
            avg, _ = self._since_last(index, key)
            if avg is None:
                return 100.0 if gpu.phase is not None else 0.0
            return avg[GR] * 100.0
        track = gpu.tracks["util"]
        cached = self._util_cache.get(index)
        if cached is not None and cached[0] == track.index:
            return cached[1]
        (busy,) = self._noisy(track.averages()[:1], index, "util", track.index)
        pct = float(round(busy * 100.0))
        self._util_cache[index] = (track.index, pct)
        return pct

    def activity(self, index: int) -> Activity | None:
        """GPM activity since the previous activity read; None without GPM or on first read."""
        return self._gpm(index, "activity")

    def _gpm(self, index: int, key: str) -> Activity | None:
        gpu = self._gpu(index)
        if self.ideal:
            avg, _ = self._since_last(index, key)
            if avg is None:
                avg = gpu.rates
            return Activity(
                tensor_active=avg[TENSOR],
                dram_active=avg[DRAM],
                sm_active=avg[SM],
                sm_occupancy=avg[OCC],
                fp32_active=avg[FP32],
                gr_engine_active=avg[GR],
            )
        if not gpu.profile.has_gpm:
            return None
        avg, count = self._since_last(index, key)
        if avg is None:
            return None

        avg = self._noisy(avg, index, f"gpm:{key}", count)
        return Activity(
            tensor_active=avg[TENSOR],
            dram_active=avg[DRAM],
            sm_active=avg[SM],
            sm_occupancy=avg[OCC],
            fp32_active=avg[FP32],
            gr_engine_active=avg[GR],
        )

    def sample(self, index: int, *, window_key: str = "sample") -> GpuSample:
        """One batched read: gauges now, NVML utilisation, GPM since the previous `sample`."""
        gpu = self._gpu(index)
        return GpuSample(
            timestamp_s=gpu.now_s,
            sm_clock_mhz=gpu.clock_mhz,
            mem_clock_mhz=gpu.profile.mem_clock_mhz,
            power_mw=round(gpu.power_w * 1000),
            energy_mj=int(gpu.energy_j * 1000),
            temperature_c=gpu.temperature_c,
            utilization_gpu_pct=self._util_pct(index, window_key),
            clock_event_reasons=gpu.reasons,
            activity=self._gpm(index, window_key),
        )

    def dcgm_values(self, index: int) -> DcgmValues:
        """What dcgm-exporter reports for GPU `index` now: its last collection.

        Realistic counters: values collected at the last ``telemetry.dcgm_interval_s``
        boundary, activity averaged over the interval before it (so up to two intervals
        old). Ideal counters: gauges now and averages since the previous DCGM read.
        """
        gpu = self._gpu(index)
        if self.ideal:
            avg, _ = self._since_last(index, "dcgm")
            if avg is None:
                avg = gpu.rates
            return DcgmValues(
                gpu.clock_mhz,
                gpu.profile.mem_clock_mhz,
                gpu.temperature_c,
                gpu.power_w,
                gpu.energy_j * 1000.0,
                avg[GR] * 100.0,
                avg,
            )
        track = gpu.tracks["dcgm"]
        snap = track.last
        cached = self._dcgm_cache.get(index)
        if cached is not None and cached[0] == track.index:
            avg = cached[1]
        else:
            avg = self._noisy(track.averages(), index, "dcgm", track.index)
            self._dcgm_cache[index] = (track.index, avg)
        return DcgmValues(
            snap.clock_mhz,
            gpu.profile.mem_clock_mhz,
            snap.temperature_c,
            snap.power_w,
            snap.energy_j * 1000.0,
            float(round(avg[GR] * 100.0)),
            avg,
        )

    # ------------------------------------------------------------------ setters
    def lock_sm_clocks(self, index: int, min_mhz: int, max_mhz: int) -> None:
        """Lock the SM clock range (snapped to supported clocks); a ceiling under limits."""
        gpu = self._setter(index)
        lo, hi = gpu.clocks_mhz[0], gpu.clocks_mhz[-1]
        if min_mhz > max_mhz or min_mhz < lo or max_mhz > hi:
            raise GpuInvalidArgumentError(
                f"GPU {index}: clock lock [{min_mhz}, {max_mhz}] MHz outside [{lo}, {hi}] "
                "or min above max"
            )
        gpu.lock_clocks(gpu._snap_down(min_mhz), gpu._snap_down(max_mhz))
        self._sim.on_actuation(index)

    def reset_sm_clocks(self, index: int) -> None:
        """Hand the clock back to the PMU."""
        self._setter(index).reset_clocks()
        self._sim.on_actuation(index)

    def set_power_limit_mw(self, index: int, limit_mw: int) -> None:
        """Set the power limit in mW within the device's constraints."""
        gpu = self._setter(index)
        c = self.power_limit_constraints_mw(index)
        if not c.min_mw <= limit_mw <= c.max_mw:
            raise GpuInvalidArgumentError(
                f"GPU {index}: power limit {limit_mw} mW outside [{c.min_mw}, {c.max_mw}] mW"
            )
        gpu.set_power_limit(limit_mw / 1000.0)
        self._sim.on_actuation(index)

    def reset_power_limit(self, index: int) -> None:
        """Back to the default power limit."""
        gpu = self._setter(index)
        gpu.set_power_limit(gpu.profile.power_limit_default_w)
        self._sim.on_actuation(index)
