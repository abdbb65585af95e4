"""`SimBackend`: the `GpuBackend` over a `triserve.sim.Simulation`'s simulated GPUs.

Created by `Simulation` itself (`sim.backend`) and handed explicitly to controllers, the node
agent and benchmarks in place of `NvmlBackend` — never chosen through a module-global.
It behaves like NVML: setters validate their arguments the way the driver does, a backend
built with ``privileged=False`` refuses setters like an unprivileged container, a GPU marked
lost raises `GpuLostError`, utilisation and activity are averages since the previous read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from triserve.sim.physics import GpuModel
    from triserve.sim.simulation import Simulation

__all__ = ["SimBackend"]

_PERMISSION_HINT = "run the agent as root or add CAP_SYS_ADMIN to its container"


class SimBackend:
    """A GpuBackend whose GPUs are the simulation's `GpuModel`s (indices 0..n-1)."""

    def __init__(self, sim: Simulation, *, privileged: bool = True, host_seed: int = 0) -> None:
        self._sim = sim
        self.privileged = privileged
        self._lost: set[int] = set()
        self._windows: dict[tuple[str, int], tuple[float, float, float, float, float]] = {}
        self._host_seed = host_seed

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

    def _window(self, index: int, key: str) -> tuple[float, float, float, float]:
        """Utilisation, sm, dram, tensor averaged since the last read under `key`."""
        gpu = self._gpu(index)
        now = (gpu.now_s, gpu.busy_int_s, gpu.sm_int_s, gpu.dram_int_s, gpu.tensor_int_s)
        prev = self._windows.get((key, index))
        self._windows[(key, index)] = now
        if prev is None or now[0] - prev[0] <= 1e-9:
            busy = 1.0 if gpu.phase is not None else 0.0
            pt = gpu.point
            return busy, pt.sm_active, pt.dram_active, pt.tensor_active
        span = now[0] - prev[0]
        return tuple(min(max((now[i] - prev[i]) / span, 0.0), 1.0) for i in range(1, 5))  # type: ignore[return-value]

    def utilization_gpu_pct(self, index: int) -> float:
        """Percent of time a kernel ran since the previous utilisation read."""
        return self._window(index, "util")[0] * 100.0

    def activity(self, index: int) -> Activity:
        """Tensor / DRAM / SM activity averaged since the previous activity read."""
        _, sm, dram, tensor = self._window(index, "activity")
        return Activity(tensor_active=tensor, dram_active=dram, sm_active=sm)

    def sample(self, index: int, *, window_key: str = "sample") -> GpuSample:
        """One batched read; averages cover the time since the previous `sample` call."""
        gpu = self._gpu(index)
        busy, sm, dram, tensor = self._window(index, window_key)
        return GpuSample(
            timestamp_s=gpu.now_s,
            sm_clock_mhz=gpu.clock_mhz,
            mem_clock_mhz=gpu.profile.mem_clock_mhz,
            power_mw=round(gpu.power_w * 1000),
            energy_mj=int(gpu.energy_j * 1000),
            temperature_c=gpu.temperature_c,
            utilization_gpu_pct=busy * 100.0,
            clock_event_reasons=gpu.reasons,
            activity=Activity(tensor_active=tensor, dram_active=dram, sm_active=sm),
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
