"""GPU access for triserve: the `GpuBackend` protocol, its errors, and the NVML backend.

`NvmlBackend` (real GPUs through nvidia-ml-py) is chosen by explicit argument by the node
agent, the profiler and tests — never via a global — and imported lazily, so that simulator
users never load pynvml. The simulated backend is the simulator's own:
`triserve.sim.backend.SimBackend`, built by every `triserve.sim.Simulation` (`sim.backend`);
this package knows nothing of the simulator.
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
    "ThermalThresholds",
]


def __getattr__(name: str) -> Any:
    if name == "NvmlBackend":
        from triserve.gpu.nvml import NvmlBackend

        return NvmlBackend
    raise AttributeError(f"module 'triserve.gpu' has no attribute {name!r}")
