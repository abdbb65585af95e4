"""`NvmlBackend`: the `GpuBackend` for real NVIDIA GPUs through nvidia-ml-py (`pynvml`).

The only module in triserve that imports pynvml (an import-linter contract enforces it).
Created by the node agent's main (explicit argument, no global) and by the opt-in
tests/gpu contract run. Reads work unprivileged; setters need root or CAP_SYS_ADMIN and
otherwise raise `GpuPermissionError` saying so. Every NVML error becomes a triserve
exception in exactly one place, `_map_error`. Per-tick reads batch power (field 186) and
energy (field 83) into one `nvmlDeviceGetFieldValues` call. Thermal limits come from the
T.Limit offset fields (193-196) on newer drivers, converted to absolute °C, else from
`nvmlDeviceGetTemperatureThreshold`. Activity uses NVML GPM where the device supports it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import pynvml

from triserve.gpu.backend import (
    Activity,
    ClockEventReason,
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

__all__ = ["NvmlBackend"]

T = TypeVar("T")

FI_POWER_INSTANT = 186
FI_TOTAL_ENERGY = 83
FI_TLIMIT_SHUTDOWN = 193
FI_TLIMIT_SLOWDOWN = 194
FI_TLIMIT_GPU_MAX = 196
# GPM metrics read per sample, in the order `activity` unpacks them into `Activity`.
_GPM_METRICS: tuple[str, ...] = (
    "NVML_GPM_METRIC_ANY_TENSOR_UTIL",
    "NVML_GPM_METRIC_DRAM_BW_UTIL",
    "NVML_GPM_METRIC_SM_UTIL",
    "NVML_GPM_METRIC_SM_OCCUPANCY",
    "NVML_GPM_METRIC_FP16_UTIL",
    "NVML_GPM_METRIC_FP32_UTIL",
    "NVML_GPM_METRIC_GRAPHICS_UTIL",
)
_PERMISSION_HINT = "run the agent as root or add CAP_SYS_ADMIN to its container"


def _map_error(exc: pynvml.NVMLError, what: str) -> GpuError:
    """THE mapping from NVML errors to triserve exceptions (used for every call)."""
    code = getattr(exc, "value", None)
    msg = f"{what}: {exc}"
    if code == pynvml.NVML_ERROR_NO_PERMISSION:
        return GpuPermissionError(f"{msg}; {_PERMISSION_HINT}")
    if code in (pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND):
        return GpuNotSupportedError(f"{msg}; this GPU or driver does not support it")
    if code in (pynvml.NVML_ERROR_INVALID_ARGUMENT, pynvml.NVML_ERROR_FREQ_NOT_SUPPORTED):
        return GpuInvalidArgumentError(f"{msg}; check the value against the device's range")
    if code in (pynvml.NVML_ERROR_GPU_IS_LOST, pynvml.NVML_ERROR_RESET_REQUIRED):
        return GpuLostError(f"{msg}; the GPU needs a reset or node reboot")
    if code in (
        pynvml.NVML_ERROR_UNINITIALIZED,
        pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
        pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
        pynvml.NVML_ERROR_NOT_FOUND,
        pynvml.NVML_ERROR_GPU_NOT_FOUND,
    ):
        return GpuUnavailableError(f"{msg}; is the NVIDIA driver loaded and the GPU visible?")
    return GpuError(msg)


def _field_value(fv: Any) -> float | None:
    """The numeric value of one nvmlFieldValue_t, or None when its read failed."""
    if getattr(fv, "nvmlReturn", 1) != pynvml.NVML_SUCCESS:
        return None
    vt = fv.valueType
    v = fv.value
    if vt == pynvml.NVML_VALUE_TYPE_DOUBLE:
        return float(v.dVal)
    if vt == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT:
        return float(v.uiVal)
    if vt == pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG:
        return float(v.ulVal)
    if vt == pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG:
        return float(v.ullVal)
    if vt == pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG:
        return float(v.sllVal)
    return float(v.siVal)


class NvmlBackend:
    """GpuBackend over NVML; `init=True` calls nvmlInit (and `close()` shuts it down)."""

    #: NVML has no getter for locked clocks: `locked_sm_clocks_mhz` is this backend's memory,
    #: so restores cross-check clock event reasons and the SM clock
    #: (`triserve.node_agent.restore.clock_read_back`).
    reads_locks = False

    def __init__(self, *, init: bool = True) -> None:
        self._locks: dict[int, tuple[int, int]] = {}
        self._handles: dict[int, Any] = {}
        self._gpm_prev: dict[int, Any] = {}
        if init:
            self._call("nvmlInit", pynvml.nvmlInit)

    def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except pynvml.NVMLError as exc:
            raise _map_error(exc, what) from exc

    def close(self) -> None:
        """Shut NVML down (locks applied stay on the GPU; reset them first)."""
        self._call("nvmlShutdown", pynvml.nvmlShutdown)

    def _h(self, index: int) -> Any:
        h = self._handles.get(index)
        if h is None:
            h = self._call(f"GPU {index}: get handle", pynvml.nvmlDeviceGetHandleByIndex, index)
            self._handles[index] = h
        return h

    # ----------------------------------------------------------------- reads
    def device_count(self) -> int:
        """Number of GPUs NVML sees."""
        return int(self._call("device count", pynvml.nvmlDeviceGetCount))

    def identity(self, index: int) -> GpuIdentity:
        """UUID, name and PCI bus id."""
        h = self._h(index)
        uuid = self._call(f"GPU {index}: UUID", pynvml.nvmlDeviceGetUUID, h)
        name = self._call(f"GPU {index}: name", pynvml.nvmlDeviceGetName, h)
        pci = self._call(f"GPU {index}: PCI info", pynvml.nvmlDeviceGetPciInfo, h)
        bus = pci.busId
        get_mig_mode = getattr(pynvml, "nvmlDeviceGetMigMode", None)
        try:
            current, _pending = get_mig_mode(h) if get_mig_mode else (0, 0)
            mig = current == getattr(pynvml, "NVML_DEVICE_MIG_ENABLE", 1)
        except pynvml.NVMLError:
            mig = False  # GPUs and drivers without MIG answer NOT_SUPPORTED
        return GpuIdentity(
            index,
            uuid.decode() if isinstance(uuid, bytes) else str(uuid),
            name.decode() if isinstance(name, bytes) else str(name),
            bus.decode() if isinstance(bus, bytes) else str(bus),
            mig_enabled=bool(mig),
        )

    def supported_sm_clocks_mhz(self, index: int) -> tuple[int, ...]:
        """SM clocks supported at the highest memory clock, ascending."""
        h = self._h(index)
        mems = self._call(
            f"GPU {index}: memory clocks", pynvml.nvmlDeviceGetSupportedMemoryClocks, h
        )
        clocks = self._call(
            f"GPU {index}: SM clocks", pynvml.nvmlDeviceGetSupportedGraphicsClocks, h, max(mems)
        )
        return tuple(sorted(int(c) for c in clocks))

    def default_max_sm_clock_mhz(self, index: int) -> int:
        """Max SM clock."""
        h = self._h(index)
        return int(
            self._call(
                f"GPU {index}: max clock", pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_SM
            )
        )

    def sm_clock_mhz(self, index: int) -> int:
        """Current SM clock."""
        h = self._h(index)
        return int(
            self._call(
                f"GPU {index}: SM clock", pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM
            )
        )

    def mem_clock_mhz(self, index: int) -> int:
        """Current memory clock."""
        h = self._h(index)
        return int(
            self._call(
                f"GPU {index}: mem clock", pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_MEM
            )
        )

    def locked_sm_clocks_mhz(self, index: int) -> tuple[int, int] | None:
        """The lock this backend applied and has not reset (NVML cannot report locks)."""
        return self._locks.get(index)

    def power_limit_constraints_mw(self, index: int) -> PowerLimitConstraints:
        """Power-limit range and default, mW."""
        h = self._h(index)
        lo, hi = self._call(
            f"GPU {index}: power limit range",
            pynvml.nvmlDeviceGetPowerManagementLimitConstraints,
            h,
        )
        default = self._call(
            f"GPU {index}: default power limit", pynvml.nvmlDeviceGetPowerManagementDefaultLimit, h
        )
        return PowerLimitConstraints(int(lo), int(hi), int(default))

    def power_limit_mw(self, index: int) -> int:
        """Enforced power limit, mW."""
        return int(
            self._call(
                f"GPU {index}: power limit", pynvml.nvmlDeviceGetEnforcedPowerLimit, self._h(index)
            )
        )

    def _fields(self, index: int, ids: list[int]) -> list[float | None]:
        values = self._call(
            f"GPU {index}: field values", pynvml.nvmlDeviceGetFieldValues, self._h(index), ids
        )
        return [_field_value(v) for v in values]

    def power_usage_mw(self, index: int) -> int:
        """Instantaneous power (field 186), falling back to the 1 s average reading."""
        (inst,) = self._fields(index, [FI_POWER_INSTANT])
        if inst is not None:
            return int(inst)
        return int(
            self._call(f"GPU {index}: power", pynvml.nvmlDeviceGetPowerUsage, self._h(index))
        )

    def total_energy_mj(self, index: int) -> int:
        """Energy counter in mJ since driver load."""
        h = self._h(index)
        return int(
            self._call(f"GPU {index}: energy", pynvml.nvmlDeviceGetTotalEnergyConsumption, h)
        )

    def temperature_c(self, index: int) -> float:
        """GPU core temperature."""
        h = self._h(index)
        return float(
            self._call(
                f"GPU {index}: temperature",
                pynvml.nvmlDeviceGetTemperature,
                h,
                pynvml.NVML_TEMPERATURE_GPU,
            )
        )

    def thermal_thresholds_c(self, index: int) -> ThermalThresholds:
        """Absolute thresholds; T.Limit offsets (newer drivers) are added to the current temp.

        A T.Limit value is the margin below the limit (limit = current + offset), so
        ``shutdown -8`` style values (as newer drivers print them) are offsets of the threshold
        relative to the GPU-max limit; both styles end up absolute here.
        """
        h = self._h(index)
        try:
            shut, slow, gmax = self._fields(
                index, [FI_TLIMIT_SHUTDOWN, FI_TLIMIT_SLOWDOWN, FI_TLIMIT_GPU_MAX]
            )
        except GpuNotSupportedError:
            shut = slow = gmax = None
        if shut is not None and slow is not None and gmax is not None:
            now_c = self.temperature_c(index)
            return ThermalThresholds(now_c + shut, now_c + slow, now_c + gmax)

        def thr(kind: int) -> float:
            return float(
                self._call(
                    f"GPU {index}: threshold {kind}",
                    pynvml.nvmlDeviceGetTemperatureThreshold,
                    h,
                    kind,
                )
            )

        return ThermalThresholds(
            thr(pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN),
            thr(pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN),
            thr(pynvml.NVML_TEMPERATURE_THRESHOLD_GPU_MAX),
        )

    def clock_event_reasons(self, index: int) -> ClockEventReason:
        """Clocks-event reason bits."""
        h = self._h(index)
        fn = (
            getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
            or pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
        )
        bits = int(self._call(f"GPU {index}: clock event reasons", fn, h))
        return ClockEventReason(bits & 0xFF)

    def utilization_gpu_pct(self, index: int) -> float:
        """Percent of the last sample period a kernel ran."""
        util = self._call(
            f"GPU {index}: utilization", pynvml.nvmlDeviceGetUtilizationRates, self._h(index)
        )
        return float(util.gpu)

    def activity(self, index: int) -> Activity | None:
        """GPM tensor/DRAM/SM activity since the previous call (Hopper+), else None."""
        try:
            h = self._h(index)
            support = pynvml.nvmlGpmQueryDeviceSupport(h)
            if not getattr(support, "isSupportedDevice", 0):
                return None
            sample = pynvml.nvmlGpmSampleAlloc()
            pynvml.nvmlGpmSampleGet(h, sample)
            prev = self._gpm_prev.get(index)
            self._gpm_prev[index] = sample
            if prev is None:
                return None
            mg = pynvml.c_nvmlGpmMetricsGet_t()
            mg.version = pynvml.NVML_GPM_METRICS_GET_VERSION
            mg.numMetrics = len(_GPM_METRICS)
            mg.sample1 = prev
            mg.sample2 = sample
            for i, name in enumerate(_GPM_METRICS):
                mg.metrics[i].metricId = getattr(pynvml, name)
            pynvml.nvmlGpmMetricsGet(mg)
            vals = [
                max(0.0, min(1.0, float(mg.metrics[i].value) / 100.0))
                for i in range(len(_GPM_METRICS))
            ]
            pynvml.nvmlGpmSampleFree(prev)
            return Activity(
                tensor_active=vals[0],
                dram_active=vals[1],
                sm_active=vals[2],
                sm_occupancy=vals[3],
                fp16_active=vals[4],
                fp32_active=vals[5],
                gr_engine_active=vals[6],
            )
        except (pynvml.NVMLError, AttributeError, TypeError):
            return None

    def sample(self, index: int) -> GpuSample:
        """Per-tick read: power and energy batched in one field-values call."""
        power, energy = self._fields(index, [FI_POWER_INSTANT, FI_TOTAL_ENERGY])
        return GpuSample(
            timestamp_s=time.monotonic(),
            sm_clock_mhz=self.sm_clock_mhz(index),
            mem_clock_mhz=self.mem_clock_mhz(index),
            power_mw=int(power) if power is not None else self.power_usage_mw(index),
            energy_mj=int(energy) if energy is not None else self.total_energy_mj(index),
            temperature_c=self.temperature_c(index),
            utilization_gpu_pct=self.utilization_gpu_pct(index),
            clock_event_reasons=self.clock_event_reasons(index),
            activity=self.activity(index),
        )

    # --------------------------------------------------------------- setters
    def lock_sm_clocks(self, index: int, min_mhz: int, max_mhz: int) -> None:
        """Lock SM clocks (root/CAP_SYS_ADMIN)."""
        if min_mhz > max_mhz:
            raise GpuInvalidArgumentError(
                f"GPU {index}: lock min {min_mhz} MHz above max {max_mhz} MHz"
            )
        self._call(
            f"GPU {index}: lock SM clocks",
            pynvml.nvmlDeviceSetGpuLockedClocks,
            self._h(index),
            min_mhz,
            max_mhz,
        )
        self._locks[index] = (min_mhz, max_mhz)

    def reset_sm_clocks(self, index: int) -> None:
        """Remove the SM clock lock."""
        self._call(
            f"GPU {index}: reset SM clocks", pynvml.nvmlDeviceResetGpuLockedClocks, self._h(index)
        )
        self._locks.pop(index, None)

    def set_power_limit_mw(self, index: int, limit_mw: int) -> None:
        """Set the power limit (root/CAP_SYS_ADMIN)."""
        self._call(
            f"GPU {index}: set power limit",
            pynvml.nvmlDeviceSetPowerManagementLimit,
            self._h(index),
            limit_mw,
        )

    def reset_power_limit(self, index: int) -> None:
        """Back to the default power limit."""
        self.set_power_limit_mw(index, self.power_limit_constraints_mw(index).default_mw)
