"""A stateful fake NVML: a `pynvml`-shaped object whose GPUs outlive the agent.

`FakeDriver` is the hardware: every GPU's locked clock range and power limit live here,
not in the agent, so they survive an agent "restart" (a new `NvmlBackend` and `NodeAgent`
in the same test), as a real GPU's do. `FakeDriver.module()` returns the object to patch in
place of `triserve.gpu.nvml.pynvml`, so the real `NvmlBackend` runs against it unchanged.

Fault injection, all on the driver so it outlives agents too:
- `fail(call, code, times=None, gpu=None)` — the named call (e.g.
  ``"nvmlDeviceResetGpuLockedClocks"``) raises NVML error `code` the next `times` times
  (None: until `clear()`), for one GPU or all;
- `lose(gpu)` / `recover(gpu)` — every call on that GPU raises GPU_IS_LOST;
- `ignore_power_sets(gpu, times)` — the power-limit setter returns success and changes nothing,
  like the `_v2` wrapper of nvidia-ml-py that drops the driver's return code;
- `ignore_clock_resets(gpu, times)` — the clock reset returns success and the lock stays;
- `hide(gpu)` / `show(gpu)` — the GPU is absent from enumeration (driver hiccup, GPU reset):
  the device count leaves it out and later GPUs move down one index, as NVML numbers them;
- `set_mig(gpu, enabled)` — an administrator switches the GPU's MIG mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml

SUPPORTED_MHZ = tuple(range(345, 1981, 15))
BOOST_MHZ = 1980
MEM_MHZ = 2619
POWER_MIN_MW, POWER_MAX_MW, POWER_DEFAULT_MW = 200_000, 700_000, 700_000


@dataclass(slots=True)
class FakeGpu:
    """One GPU's hardware state."""

    index: int
    locked: tuple[int, int] | None = None
    power_limit_mw: int = POWER_DEFAULT_MW
    lost: bool = False
    ignore_power_sets: int = 0  # how many more power-limit sets to drop silently
    ignore_clock_resets: int = 0  # how many more clock resets to drop silently
    absent: bool = False  # left out of enumeration
    mig: bool = False
    busy: bool = True  # a kernel runs (utilization 60 %); idle: 0 %, GPU_IDLE, idle clock
    extra_reasons: int = 0  # clock event reason bits the driver reports besides GPU_IDLE
    energy_mj: int = 0

    @property
    def uuid(self) -> str:
        return f"GPU-fa4e0000-0000-4000-8000-{self.index:012x}"

    @property
    def at_defaults(self) -> bool:
        return self.locked is None and self.power_limit_mw == POWER_DEFAULT_MW


# ---- the hardware behind each pynvml call (no fault injection here) ----------------


def _set_power(h: FakeGpu, mw: int) -> None:
    if not POWER_MIN_MW <= mw <= POWER_MAX_MW:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    if h.ignore_power_sets > 0:
        h.ignore_power_sets -= 1
    else:
        h.power_limit_mw = mw


def _lock(h: FakeGpu, lo: int, hi: int) -> None:
    if lo > hi or lo < SUPPORTED_MHZ[0] or hi > SUPPORTED_MHZ[-1]:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    h.locked = (lo, hi)


def _reset(h: FakeGpu) -> None:
    if h.ignore_clock_resets > 0:
        h.ignore_clock_resets -= 1
    else:
        h.locked = None


def _mig_mode(h: FakeGpu) -> tuple[int, int]:
    mode = pynvml.NVML_DEVICE_MIG_ENABLE if h.mig else pynvml.NVML_DEVICE_MIG_DISABLE
    return mode, mode


def _fields(h: FakeGpu, ids: list[int]) -> list[Any]:
    h.energy_mj += 1000
    values = {186: 300_000, 83: h.energy_mj}
    return [
        SimpleNamespace(
            nvmlReturn=pynvml.NVML_SUCCESS if i in values else pynvml.NVML_ERROR_NOT_SUPPORTED,
            valueType=pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG,
            value=SimpleNamespace(ullVal=values.get(i, 0)),
        )
        for i in ids
    ]


def _clock(h: FakeGpu, kind: int) -> int:
    if kind == pynvml.NVML_CLOCK_MEM:
        return MEM_MHZ
    if not h.busy:
        return SUPPORTED_MHZ[0]  # idle: the lowest clock, locked or not
    return h.locked[1] if h.locked else BOOST_MHZ


def _reasons(h: FakeGpu) -> int:
    return h.extra_reasons | (0 if h.busy else pynvml.nvmlClocksEventReasonGpuIdle)


def _utilization(h: FakeGpu) -> Any:
    return SimpleNamespace(gpu=60 if h.busy else 0, memory=30 if h.busy else 0)


def _threshold(h: FakeGpu, kind: int) -> int:
    return {0: 92, 1: 89, 3: 87}.get(kind, 87)


@dataclass(slots=True)
class Fault:
    """An injected NVML error on one call name (and GPU, or all)."""

    call: str
    code: int
    times: int | None
    gpu: int | None


@dataclass
class FakeDriver:
    """The node's GPUs and the faults injected into their driver."""

    count: int = 2
    gpus: list[FakeGpu] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    calls: int = 0

    def __post_init__(self) -> None:
        self.gpus = [FakeGpu(i) for i in range(self.count)]

    # ---- fault injection --------------------------------------------------------------
    def fail(self, call: str, code: int, times: int | None = None, gpu: int | None = None) -> None:
        """Make `call` raise NVML error `code` (see the module docstring)."""
        self.faults.append(Fault(call, code, times, gpu))

    def clear(self) -> None:
        """Remove every fault: calls succeed, lost GPUs are back, power sets take effect."""
        self.faults.clear()
        for gpu in self.gpus:
            gpu.lost = False
            gpu.ignore_power_sets = 0
            gpu.ignore_clock_resets = 0

    def lose(self, gpu: int) -> None:
        """GPU `gpu` falls off the bus (its clock and power state stay as they were)."""
        self.gpus[gpu].lost = True

    def recover(self, gpu: int) -> None:
        """GPU `gpu` answers again."""
        self.gpus[gpu].lost = False

    def ignore_power_sets(self, gpu: int, times: int = 1_000_000) -> None:
        """The next `times` power-limit sets on GPU `gpu` silently do nothing."""
        self.gpus[gpu].ignore_power_sets = times

    def ignore_clock_resets(self, gpu: int, times: int = 1_000_000) -> None:
        """The next `times` clock resets on GPU `gpu` return success and leave the lock."""
        self.gpus[gpu].ignore_clock_resets = times

    def hide(self, gpu: int) -> None:
        """GPU `gpu` drops out of enumeration (its clock and power state stay as they were)."""
        self.gpus[gpu].absent = True

    def show(self, gpu: int) -> None:
        """GPU `gpu` enumerates again."""
        self.gpus[gpu].absent = False

    def set_mig(self, gpu: int, enabled: bool) -> None:
        """Switch GPU `gpu`'s MIG mode (as `nvidia-smi -mig 1` would)."""
        self.gpus[gpu].mig = enabled

    def visible(self) -> list[FakeGpu]:
        """The GPUs NVML enumerates, in index order."""
        return [g for g in self.gpus if not g.absent]

    def locked(self) -> list[int]:
        """Indices of GPUs not at their defaults (clock lock or changed power limit)."""
        return [g.index for g in self.gpus if not g.at_defaults]

    # ---- the pynvml surface -------------------------------------------------------------
    def _check(self, call: str, index: int | None) -> None:
        self.calls += 1
        if index is not None and self.gpus[index].lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        for fault in list(self.faults):
            if fault.call == call and fault.gpu in (None, index):
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                raise pynvml.NVMLError(fault.code)

    def module(self) -> Any:
        """A namespace with pynvml's constants, its NVMLError and the calls NvmlBackend makes."""
        ns = SimpleNamespace(**{k: getattr(pynvml, k) for k in dir(pynvml) if k.isupper()})
        ns.NVMLError = pynvml.NVMLError
        d = self

        def call(name: str, fn: Any) -> None:
            def wrapped(*args: Any) -> Any:
                handle = args[0] if args and isinstance(args[0], FakeGpu) else None
                d._check(name, handle.index if handle is not None else None)
                return fn(*args)

            setattr(ns, name, wrapped)

        def handle(i: int) -> FakeGpu:
            visible = d.visible()
            if not 0 <= i < len(visible):
                raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            return visible[i]

        for name, fn in {
            "nvmlInit": lambda: None,
            "nvmlShutdown": lambda: None,
            "nvmlDeviceGetCount": lambda: len(d.visible()),
            "nvmlDeviceGetHandleByIndex": handle,
            "nvmlDeviceGetUUID": lambda h: h.uuid,
            "nvmlDeviceGetName": lambda h: "NVIDIA H100 80GB HBM3",
            "nvmlDeviceGetPciInfo": lambda h: SimpleNamespace(busId=f"00000000:{h.index:02X}:00.0"),
            "nvmlDeviceGetSupportedMemoryClocks": lambda h: [MEM_MHZ],
            "nvmlDeviceGetSupportedGraphicsClocks": lambda h, mem: list(SUPPORTED_MHZ),
            "nvmlDeviceGetMaxClockInfo": lambda h, kind: BOOST_MHZ,
            "nvmlDeviceGetClockInfo": _clock,
            "nvmlDeviceGetPowerManagementLimitConstraints": lambda h: [POWER_MIN_MW, POWER_MAX_MW],
            "nvmlDeviceGetPowerManagementDefaultLimit": lambda h: POWER_DEFAULT_MW,
            "nvmlDeviceGetEnforcedPowerLimit": lambda h: h.power_limit_mw,
            "nvmlDeviceGetFieldValues": _fields,
            "nvmlDeviceGetPowerUsage": lambda h: 300_000,
            "nvmlDeviceGetTotalEnergyConsumption": lambda h: h.energy_mj,
            "nvmlDeviceGetTemperature": lambda h, kind: 55,
            "nvmlDeviceGetTemperatureThreshold": _threshold,
            "nvmlDeviceGetCurrentClocksEventReasons": _reasons,
            "nvmlDeviceGetUtilizationRates": _utilization,
            "nvmlGpmQueryDeviceSupport": lambda h: SimpleNamespace(isSupportedDevice=0),
            "nvmlDeviceGetMigMode": _mig_mode,
            "nvmlDeviceSetGpuLockedClocks": _lock,
            "nvmlDeviceResetGpuLockedClocks": _reset,
            "nvmlDeviceSetPowerManagementLimit": _set_power,
        }.items():
            call(name, fn)
        return ns
