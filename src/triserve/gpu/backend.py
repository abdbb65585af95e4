"""The GPU abstraction every controller and the node agent talk to.

`GpuBackend` is a protocol with two real implementations: `triserve.gpu.nvml.NvmlBackend`
(the only module that imports pynvml) and `triserve.sim.backend.SimBackend` (over the
simulator). A backend is chosen by an explicit argument, never by a module-global.
Every quantity carries its unit in its name: `_mhz`, `_mw`, `_mj`, `_c`, `_pct`, `_s`.
Vendor errors are mapped onto the exception types below in exactly one place per backend.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class GpuError(Exception):
    """Base class for every error a `GpuBackend` raises."""


class GpuUnavailableError(GpuError):
    """The management library is missing, not initialised, or the device index is unknown."""


class GpuNotSupportedError(GpuError):
    """The device or driver does not support the requested operation."""


class GpuPermissionError(GpuError):
    """A setter was refused: the process needs root or CAP_SYS_ADMIN."""


class GpuInvalidArgumentError(GpuError):
    """An argument was outside what the device accepts (e.g. a clock outside its range)."""


class GpuLostError(GpuError):
    """The GPU fell off the bus or stopped answering; it needs operator attention."""


class ClockEventReason(enum.IntFlag):
    """Why the SM clock is below its maximum; bit values match NVML's clocks-event reasons."""

    NONE = 0x0
    GPU_IDLE = 0x1
    APPLICATIONS_CLOCKS = 0x2
    SW_POWER_CAP = 0x4
    HW_SLOWDOWN = 0x8
    SYNC_BOOST = 0x10
    SW_THERMAL = 0x20
    HW_THERMAL = 0x40
    HW_POWER_BRAKE = 0x80

    @property
    def is_thermal(self) -> bool:
        """True when a thermal slowdown (software or hardware) is active."""
        return bool(self & (ClockEventReason.SW_THERMAL | ClockEventReason.HW_THERMAL))

    @property
    def is_power(self) -> bool:
        """True when the clock is cut to stay under the power limit."""
        return bool(self & (ClockEventReason.SW_POWER_CAP | ClockEventReason.HW_POWER_BRAKE))


@dataclass(frozen=True, slots=True)
class GpuIdentity:
    """Who a GPU is: its index on the node, UUID (``GPU-…``), marketing name and PCI bus id.

    `mig_enabled` is True when the GPU runs in MIG mode (its clocks are then shared by every
    MIG instance, so the node agent only observes it).
    """

    index: int
    uuid: str
    name: str
    pci_bus_id: str
    mig_enabled: bool = False


@dataclass(frozen=True, slots=True)
class ThermalThresholds:
    """Temperature limits in °C, absolute (offset-style limits are converted by the backend)."""

    shutdown_c: float
    slowdown_c: float
    max_operating_c: float


@dataclass(frozen=True, slots=True)
class PowerLimitConstraints:
    """The power limit range and default, in milliwatts."""

    min_mw: int
    max_mw: int
    default_mw: int


@dataclass(frozen=True, slots=True)
class Activity:
    """Profiling activity over the last sample period, each a fraction in [0, 1].

    Matches DCGM's DCGM_FI_PROF_PIPE_TENSOR_ACTIVE, DRAM_ACTIVE and SM_ACTIVE, or NVML GPM's
    ANY_TENSOR_UTIL, DRAM_BW_UTIL and SM_UTIL on Hopper and newer. Their meanings
    (docs/calibration.md) are not the roofline's: SM activity counts cycles with a warp
    resident, stalled or not, so memory-bound work that fills the GPU reads close to 1, and
    DRAM activity tops out near 0.8. The optional fields are None where the source does not
    offer them: SM occupancy (DCGM SM_OCCUPANCY, GPM SM_OCCUPANCY), the FP16 / FP32 pipes
    (PIPE_FP16/FP32_ACTIVE, GPM FP16/FP32_UTIL) and the graphics engine (GR_ENGINE_ACTIVE,
    GPM GRAPHICS_UTIL).

    `period_s` is how long the fractions average over: None for the sample's own period
    (NVML GPM, read every tick); dcgm-exporter's collection interval (30 s by default) for
    activity taken from its scrape, which is too long to tell which phase runs now.
    """

    tensor_active: float
    dram_active: float
    sm_active: float
    sm_occupancy: float | None = None
    fp16_active: float | None = None
    fp32_active: float | None = None
    gr_engine_active: float | None = None
    period_s: float | None = None


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One batched telemetry read of a GPU, as the agent takes every control tick."""

    timestamp_s: float
    sm_clock_mhz: int
    mem_clock_mhz: int
    power_mw: int
    energy_mj: int
    temperature_c: float
    utilization_gpu_pct: float
    clock_event_reasons: ClockEventReason
    activity: Activity | None


@runtime_checkable
class GpuBackend(Protocol):
    """Everything triserve reads from and sets on a GPU. Indices are node-local (0..n-1)."""

    @property
    def reads_locks(self) -> bool:
        """True when `locked_sm_clocks_mhz` reads the device, False when it only recalls.

        NVML has no getter for locked clocks: its backend recalls what it set, so a restore
        cross-checks what the device does show (`triserve.node_agent.restore.clock_read_back`).
        """
        ...

    def device_count(self) -> int:
        """Number of GPUs this backend manages."""
        ...

    def identity(self, index: int) -> GpuIdentity:
        """Index, UUID, name and PCI bus id of GPU `index`."""
        ...

    def supported_sm_clocks_mhz(self, index: int) -> tuple[int, ...]:
        """Every SM clock the device accepts, ascending, in MHz."""
        ...

    def default_max_sm_clock_mhz(self, index: int) -> int:
        """The highest SM clock the PMU boosts to by default, in MHz."""
        ...

    def sm_clock_mhz(self, index: int) -> int:
        """The current SM clock in MHz."""
        ...

    def mem_clock_mhz(self, index: int) -> int:
        """The current memory clock in MHz."""
        ...

    def lock_sm_clocks(self, index: int, min_mhz: int, max_mhz: int) -> None:
        """Lock the SM clock into [min_mhz, max_mhz]; a ceiling under power/thermal limits."""
        ...

    def reset_sm_clocks(self, index: int) -> None:
        """Remove any SM clock lock, handing the clock back to the PMU."""
        ...

    def locked_sm_clocks_mhz(self, index: int) -> tuple[int, int] | None:
        """The lock this backend last applied and has not reset, or None."""
        ...

    def power_limit_constraints_mw(self, index: int) -> PowerLimitConstraints:
        """Allowed power-limit range and default, in mW."""
        ...

    def power_limit_mw(self, index: int) -> int:
        """The enforced power limit in mW."""
        ...

    def set_power_limit_mw(self, index: int, limit_mw: int) -> None:
        """Set the power limit in mW (needs root or CAP_SYS_ADMIN)."""
        ...

    def reset_power_limit(self, index: int) -> None:
        """Set the power limit back to the device default."""
        ...

    def power_usage_mw(self, index: int) -> int:
        """Instantaneous board power in mW."""
        ...

    def total_energy_mj(self, index: int) -> int:
        """Monotone energy counter in mJ since the driver loaded."""
        ...

    def temperature_c(self, index: int) -> float:
        """GPU core temperature in °C."""
        ...

    def thermal_thresholds_c(self, index: int) -> ThermalThresholds:
        """Shutdown, slowdown and max-operating temperatures in °C."""
        ...

    def clock_event_reasons(self, index: int) -> ClockEventReason:
        """Why the clock is where it is (idle, power cap, thermal …)."""
        ...

    def utilization_gpu_pct(self, index: int) -> float:
        """Percent of the last sample period in which a kernel ran."""
        ...

    def activity(self, index: int) -> Activity | None:
        """Tensor/DRAM/SM activity when the device exposes it (GPM, DCGM), else None."""
        ...

    def sample(self, index: int) -> GpuSample:
        """All per-tick telemetry in as few driver calls as the backend allows."""
        ...
