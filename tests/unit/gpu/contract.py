"""The GpuBackend contract: behaviour every backend (SimBackend, NvmlBackend) must show.

Imported by tests/unit/sim/test_backend_contract.py (SimBackend, always) and tests/gpu/
(NvmlBackend, opt-in with --with-gpu, where NVML and a GPU exist). Each function takes a
backend and a GPU index.
"""

from __future__ import annotations

import pytest

from triserve.gpu.backend import (
    ClockEventReason,
    GpuBackend,
    GpuInvalidArgumentError,
    GpuSample,
)


def check_reads(backend: GpuBackend, index: int) -> None:
    assert isinstance(backend, GpuBackend)
    assert backend.device_count() > index
    ident = backend.identity(index)
    assert ident.uuid.startswith("GPU-")
    clocks = backend.supported_sm_clocks_mhz(index)
    assert list(clocks) == sorted(clocks)
    assert backend.default_max_sm_clock_mhz(index) <= clocks[-1]
    assert clocks[0] <= backend.sm_clock_mhz(index) <= clocks[-1]
    c = backend.power_limit_constraints_mw(index)
    assert c.min_mw <= c.default_mw <= c.max_mw
    assert c.min_mw <= backend.power_limit_mw(index) <= c.max_mw
    assert backend.power_usage_mw(index) > 0
    th = backend.thermal_thresholds_c(index)
    assert th.max_operating_c <= th.slowdown_c <= th.shutdown_c
    assert isinstance(backend.clock_event_reasons(index), ClockEventReason)
    assert 0.0 <= backend.utilization_gpu_pct(index) <= 100.0


def check_sample(backend: GpuBackend, index: int) -> None:
    s = backend.sample(index)
    assert isinstance(s, GpuSample)
    assert s.power_mw > 0
    # The sample's energy and total_energy_mj read one counter, which never runs backwards.
    e1 = backend.total_energy_mj(index)
    assert 0 <= s.energy_mj <= e1 <= backend.total_energy_mj(index)
    if s.activity is not None:
        for v in (s.activity.tensor_active, s.activity.dram_active, s.activity.sm_active):
            assert 0.0 <= v <= 1.0


def check_lock_roundtrip(backend: GpuBackend, index: int) -> None:
    clocks = backend.supported_sm_clocks_mhz(index)
    mid = clocks[len(clocks) // 2]
    try:
        backend.lock_sm_clocks(index, clocks[0], mid)
        assert backend.locked_sm_clocks_mhz(index) == (clocks[0], mid)
    finally:
        backend.reset_sm_clocks(index)
    assert backend.locked_sm_clocks_mhz(index) is None


def check_invalid_lock_rejected(backend: GpuBackend, index: int) -> None:
    clocks = backend.supported_sm_clocks_mhz(index)
    with pytest.raises(GpuInvalidArgumentError):
        backend.lock_sm_clocks(index, clocks[-1], clocks[0])


def check_power_limit_roundtrip(backend: GpuBackend, index: int) -> None:
    c = backend.power_limit_constraints_mw(index)
    try:
        backend.set_power_limit_mw(index, c.min_mw)
        assert backend.power_limit_mw(index) == c.min_mw
    finally:
        backend.reset_power_limit(index)
    assert backend.power_limit_mw(index) == c.default_mw


READ_CHECKS = (check_reads, check_sample)
WRITE_CHECKS = (
    check_lock_roundtrip,
    check_invalid_lock_rejected,
    check_power_limit_roundtrip,
)
