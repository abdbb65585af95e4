"""GPU access for triserve: the `GpuBackend` protocol, its errors, and two backends.

`SimBackend` (over the simulator) and `NvmlBackend` (real GPUs through nvidia-ml-py) are
chosen by explicit argument by the node agent, benchmarks and tests — never via a global.
`NvmlBackend` is imported lazily so that simulator users never load pynvml.
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
from triserve.gpu.sim import SimBackend

if TYPE_CHECKING:
    from triserve.gpu.nvml import NvmlBackend

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
    raise AttributeError(f"module 'triserve.gpu' has no attribute {name!r}")
