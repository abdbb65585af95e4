"""NvmlBackend maps NVML errors onto triserve exceptions (pynvml autospecced, no GPU needed)."""

from __future__ import annotations

from collections.abc import Iterator
from unittest import mock

import pynvml
import pytest

from triserve.gpu import nvml as nvml_mod
from triserve.gpu.backend import (
    GpuInvalidArgumentError,
    GpuLostError,
    GpuNotSupportedError,
    GpuPermissionError,
    GpuUnavailableError,
)


@pytest.fixture
def fake() -> Iterator[mock.MagicMock]:
    spec = mock.create_autospec(pynvml, instance=False)
    # Keep the real exception type and constants so the mapping sees real NVML codes.
    spec.NVMLError = pynvml.NVMLError
    for name in dir(pynvml):
        if name.startswith("NVML_"):
            setattr(spec, name, getattr(pynvml, name))
    with mock.patch.object(nvml_mod, "pynvml", spec):
        yield spec


def err(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


@pytest.mark.parametrize(
    ("code", "exc"),
    [
        (pynvml.NVML_ERROR_NO_PERMISSION, GpuPermissionError),
        (pynvml.NVML_ERROR_NOT_SUPPORTED, GpuNotSupportedError),
        (pynvml.NVML_ERROR_INVALID_ARGUMENT, GpuInvalidArgumentError),
        (pynvml.NVML_ERROR_GPU_IS_LOST, GpuLostError),
        (pynvml.NVML_ERROR_UNINITIALIZED, GpuUnavailableError),
    ],
)
def test_lock_errors_map_to_project_exceptions(
    fake: mock.MagicMock, code: int, exc: type[Exception]
) -> None:
    fake.nvmlDeviceSetGpuLockedClocks.side_effect = err(code)
    backend = nvml_mod.NvmlBackend()
    with pytest.raises(exc):
        backend.lock_sm_clocks(0, 345, 1410)
    assert backend.locked_sm_clocks_mhz(0) is None


def test_setter_without_cap_sys_admin_says_what_to_do(fake: mock.MagicMock) -> None:
    fake.nvmlDeviceSetPowerManagementLimit.side_effect = err(pynvml.NVML_ERROR_NO_PERMISSION)
    with pytest.raises(GpuPermissionError, match="CAP_SYS_ADMIN"):
        nvml_mod.NvmlBackend().set_power_limit_mw(0, 300_000)


def test_uninitialised_nvml_is_unavailable(fake: mock.MagicMock) -> None:
    fake.nvmlInit.side_effect = err(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    with pytest.raises(GpuUnavailableError, match="driver"):
        nvml_mod.NvmlBackend()


def test_lock_is_remembered_until_reset(fake: mock.MagicMock) -> None:
    backend = nvml_mod.NvmlBackend()
    backend.lock_sm_clocks(0, 345, 1410)
    assert backend.locked_sm_clocks_mhz(0) == (345, 1410)
    fake.nvmlDeviceSetGpuLockedClocks.assert_called_once()
    backend.reset_sm_clocks(0)
    assert backend.locked_sm_clocks_mhz(0) is None


def test_a_wrapper_over_nvml_still_says_it_cannot_read_locks_back(fake: mock.MagicMock) -> None:
    # The agent's guard and any other wrapper must not hide that NVML only recalls its locks:
    # restores on NVML cross-check the clock instead (`restore.clock_read_back`).
    from triserve.gpu.delegating import DelegatingBackend

    backend = nvml_mod.NvmlBackend()
    assert backend.reads_locks is False
    assert DelegatingBackend(DelegatingBackend(backend)).reads_locks is False


def _fv(value: float, ret: int = pynvml.NVML_SUCCESS) -> mock.Mock:
    v = mock.Mock()
    v.nvmlReturn = ret
    v.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
    v.value.ullVal = value
    return v


def test_power_and_energy_come_from_one_field_values_call(fake: mock.MagicMock) -> None:
    fake.nvmlDeviceGetFieldValues.return_value = [_fv(412_000), _fv(9_000_000)]
    fake.nvmlDeviceGetClockInfo.return_value = 1980
    fake.nvmlDeviceGetTemperature.return_value = 55
    fake.nvmlDeviceGetUtilizationRates.return_value = mock.Mock(gpu=87)
    fake.nvmlDeviceGetCurrentClocksEventReasons.return_value = 0x4
    fake.nvmlGpmQueryDeviceSupport.return_value = mock.Mock(isSupportedDevice=0)
    s = nvml_mod.NvmlBackend().sample(0)
    assert (s.power_mw, s.energy_mj, s.sm_clock_mhz) == (412_000, 9_000_000, 1980)
    assert s.activity is None
    fake.nvmlDeviceGetFieldValues.assert_called_once()
    assert fake.nvmlDeviceGetFieldValues.call_args.args[1] == [186, 83]


def test_thermal_limits_from_tlimit_offsets(fake: mock.MagicMock) -> None:
    fake.nvmlDeviceGetFieldValues.return_value = [_fv(30), _fv(27), _fv(25)]
    fake.nvmlDeviceGetTemperature.return_value = 60
    th = nvml_mod.NvmlBackend().thermal_thresholds_c(0)
    assert (th.shutdown_c, th.slowdown_c, th.max_operating_c) == (90, 87, 85)


def test_thermal_limits_fall_back_to_absolute_thresholds(fake: mock.MagicMock) -> None:
    fake.nvmlDeviceGetFieldValues.return_value = [_fv(0, pynvml.NVML_ERROR_NOT_SUPPORTED)] * 3
    fake.nvmlDeviceGetTemperatureThreshold.side_effect = lambda h, k: {0: 92, 1: 89, 3: 87}[k]
    th = nvml_mod.NvmlBackend().thermal_thresholds_c(0)
    assert (th.shutdown_c, th.slowdown_c, th.max_operating_c) == (92, 89, 87)


def test_gpm_fills_every_activity_field_it_offers(fake: mock.MagicMock) -> None:
    # GPM metrics arrive in percent; Activity holds fractions, one per NVML_GPM_METRIC_*.
    percent = {
        pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 3.0,
        pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: 78.0,
        pynvml.NVML_GPM_METRIC_SM_UTIL: 97.0,
        pynvml.NVML_GPM_METRIC_SM_OCCUPANCY: 45.0,
        pynvml.NVML_GPM_METRIC_FP16_UTIL: 1.0,
        pynvml.NVML_GPM_METRIC_FP32_UTIL: 6.0,
        pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL: 100.0,
    }
    fake.nvmlGpmQueryDeviceSupport.return_value = mock.Mock(isSupportedDevice=1)
    metrics = [mock.Mock(metricId=0, value=0.0) for _ in range(len(percent))]
    holder = mock.Mock(metrics=metrics)
    fake.c_nvmlGpmMetricsGet_t.return_value = holder

    def fill(mg: mock.Mock) -> None:
        for m in mg.metrics:
            m.value = percent[m.metricId]

    fake.nvmlGpmMetricsGet.side_effect = fill
    backend = nvml_mod.NvmlBackend()
    assert backend.activity(0) is None  # GPM needs two samples
    act = backend.activity(0)
    assert act is not None
    assert (act.tensor_active, act.dram_active, act.sm_active) == (0.03, 0.78, 0.97)
    assert (act.sm_occupancy, act.fp16_active, act.fp32_active) == (0.45, 0.01, 0.06)
    assert act.gr_engine_active == 1.0
