"""GPU access for triserve: the `GpuBackend` protocol, its errors, and two backends.

`SimBackend` (over the simulator) and `NvmlBackend` (real GPUs through nvidia-ml-py) are
chosen by explicit argument by the node agent, benchmarks and tests — never via a global.
Both backends are imported lazily: simulator users never load pynvml, and the controllers
and a production agent (which import only `triserve.gpu.backend`) never load the simulator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from triserve.gpu.backend import (
    Activity,
    ClockEventReason,
    GpuBackend,
    GpuError,
    GpuIdentity,
    GpuInvalidArgumentError,
    GpuLostError,
    GpuNotSupportedError,
    GpuPermissionError,
    GpuSample,
    GpuUnavailableError,
    PowerLimitConstraints,
    ThermalThresholds,
)

if TYPE_CHECKING:
    from triserve.gpu.nvml import NvmlBackend
    from triserve.gpu.sim import SimBackend

__all__ = [
    "Activity",
    "ClockEventReason",
    "GpuBackend",
    "GpuError",
    "GpuIdentity",
    "GpuInvalidArgumentError",
    "GpuLostError",
    "GpuNotSupportedError",
    "GpuPermissionError",
    "GpuSample",
    "GpuUnavailableError",
    "NvmlBackend",
    "PowerLimitConstraints",
    "SimBackend",
    "ThermalThresholds",
]


def __getattr__(name: str) -> Any:
    if name == "NvmlBackend":
        from triserve.gpu.nvml import NvmlBackend

        return NvmlBackend
    if name == "SimBackend":
        from triserve.gpu.sim import SimBackend

        return SimBackend
    raise AttributeError(f"module 'triserve.gpu' has no attribute {name!r}")
