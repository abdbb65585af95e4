"""A `GpuBackend` that forwards every call to another one: the base for backend wrappers.

A wrapper that changes a few calls (the node agent's safety guard changes the setters)
subclasses `DelegatingBackend` and overrides only those; everything else reaches `inner`
unchanged. The forwarding is spelled out method by method rather than done with
``__getattr__``, so that mypy checks every signature against the `GpuBackend` protocol.
"""

from __future__ import annotations

from triserve.gpu.backend import (
    Activity,
    ClockEventReason,
    GpuBackend,
    GpuIdentity,
    GpuSample,
    PowerLimitConstraints,
    ThermalThresholds,
)


class DelegatingBackend:
    """Forwards every `GpuBackend` call to `inner`; subclasses override what they wrap."""

    def __init__(self, inner: GpuBackend) -> None:
        """Wrap `inner` (the backend that talks to the device)."""
        self.inner = inner

    @property
    def reads_locks(self) -> bool:
        """Whether `inner` reads locked clocks from the device (`GpuBackend.reads_locks`)."""
        return self.inner.reads_locks

    def device_count(self) -> int:
        """Number of GPUs (`GpuBackend.device_count`)."""
        return self.inner.device_count()

    def identity(self, index: int) -> GpuIdentity:
        """Identity of GPU `index`."""
        return self.inner.identity(index)

    def supported_sm_clocks_mhz(self, index: int) -> tuple[int, ...]:
        """Supported SM clocks, MHz, ascending."""
        return self.inner.supported_sm_clocks_mhz(index)

    def default_max_sm_clock_mhz(self, index: int) -> int:
        """Default boost clock, MHz."""
        return self.inner.default_max_sm_clock_mhz(index)

    def sm_clock_mhz(self, index: int) -> int:
        """Current SM clock, MHz."""
        return self.inner.sm_clock_mhz(index)

    def mem_clock_mhz(self, index: int) -> int:
        """Current memory clock, MHz."""
        return self.inner.mem_clock_mhz(index)

    def lock_sm_clocks(self, index: int, min_mhz: int, max_mhz: int) -> None:
        """Lock the SM clock into [min_mhz, max_mhz]."""
        self.inner.lock_sm_clocks(index, min_mhz, max_mhz)

    def reset_sm_clocks(self, index: int) -> None:
        """Remove the SM clock lock."""
        self.inner.reset_sm_clocks(index)

    def locked_sm_clocks_mhz(self, index: int) -> tuple[int, int] | None:
        """The lock in force, if any."""
        return self.inner.locked_sm_clocks_mhz(index)

    def power_limit_constraints_mw(self, index: int) -> PowerLimitConstraints:
        """Power-limit range and default, mW."""
        return self.inner.power_limit_constraints_mw(index)

    def power_limit_mw(self, index: int) -> int:
        """Enforced power limit, mW."""
        return self.inner.power_limit_mw(index)

    def set_power_limit_mw(self, index: int, limit_mw: int) -> None:
        """Set the power limit, mW."""
        self.inner.set_power_limit_mw(index, limit_mw)

    def reset_power_limit(self, index: int) -> None:
        """Set the power limit back to the device default."""
        self.inner.reset_power_limit(index)

    def power_usage_mw(self, index: int) -> int:
        """Board power, mW."""
        return self.inner.power_usage_mw(index)

    def total_energy_mj(self, index: int) -> int:
        """Energy counter, mJ."""
        return self.inner.total_energy_mj(index)

    def temperature_c(self, index: int) -> float:
        """GPU temperature, °C."""
        return self.inner.temperature_c(index)

    def thermal_thresholds_c(self, index: int) -> ThermalThresholds:
        """Thermal thresholds, °C."""
        return self.inner.thermal_thresholds_c(index)

    def clock_event_reasons(self, index: int) -> ClockEventReason:
        """Why the clock is where it is."""
        return self.inner.clock_event_reasons(index)

    def utilization_gpu_pct(self, index: int) -> float:
        """Utilisation, percent."""
        return self.inner.utilization_gpu_pct(index)

    def activity(self, index: int) -> Activity | None:
        """Profiling activity, if the device has counters for it."""
        return self.inner.activity(index)

    def sample(self, index: int) -> GpuSample:
        """One batched per-tick sample."""
        return self.inner.sample(index)
