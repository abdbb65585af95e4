"""Calibration of the H100 SXM profile against reference/calibration.md (frozen figures).

Each test drives one simulated GPU (`GpuModel`) with a synthetic phase and checks a
published figure within the tolerance stated in the test.
"""

from __future__ import annotations

import math

import pytest

from triserve.gpu.backend import ClockEventReason
from triserve.sim.physics import GpuModel, Kernel, Phase
from triserve.sim.profiles import get_profile

pytestmark = pytest.mark.calibration

H100 = get_profile("h100-sxm")


def decode_phase(ai: float = 8.0) -> Phase:
    """A decode-like phase: GEMV-style kernels at AI≈8, low tensor share."""
    nbytes = 64e9
    return Phase("decode", (Kernel(ai * nbytes, nbytes, 0.04, 0.15),))


def prefill_phase() -> Phase:
    """A compute-bound prefill-like phase (AI 600, tensor heavy)."""
    nbytes = 1e9
    return Phase("prefill", (Kernel(600 * nbytes, nbytes, 0.6, 0.9),))


def run(gpu: GpuModel, phase: Phase | None, duration_s: float, dt_s: float = 0.05) -> None:
    gpu.set_phase(phase)
    gpu.update_clock()
    t_end = gpu.now_s + duration_s
    while gpu.now_s < t_end - 1e-9:
        gpu.advance(min(dt_s, t_end - gpu.now_s))
        gpu.update_clock()


def test_idle_power_at_idle_clock_is_75_w() -> None:
    # calibration.md: H100 SXM idle ≈75 W at 345 MHz. Tolerance ±5 W.
    gpu = GpuModel(H100)
    run(gpu, None, 120.0)
    assert gpu.clock_mhz == 345
    assert gpu.power_w == pytest.approx(75.0, abs=5.0)


def test_idle_at_high_clock_costs_clearly_more_than_idle_at_low_clock() -> None:
    # DESIGN §5 and calibration.md (a live context adds 26-50 W over bare idle): ≥25 W more.
    gpu = GpuModel(H100)
    assert gpu.power_at(1980, None, 40.0) - gpu.power_at(345, None, 40.0) >= 25.0


def test_sustained_compute_bound_work_is_power_limited_below_max_clock() -> None:
    # calibration.md: H100 prefill draws the 700 W limit; TileOPs 1587: a lock is a ceiling.
    # Tolerance: power within 2% under 700 W; clock at least one step below 1980 MHz.
    gpu = GpuModel(H100)
    run(gpu, prefill_phase(), 60.0)
    assert gpu.power_w <= 700.0
    assert gpu.power_w == pytest.approx(700.0, rel=0.02)
    assert gpu.clock_mhz < 1980
    assert gpu.reasons & ClockEventReason.SW_POWER_CAP


def test_decode_draws_300_to_420_w_at_max_clock() -> None:
    # Splitwise power model: H100 decode ≈380 W. Tolerance: the brief's 300-420 W band.
    gpu = GpuModel(H100)
    run(gpu, decode_phase(), 30.0)
    assert gpu.clock_mhz == 1980
    assert 300.0 <= gpu.power_w <= 420.0


def test_decode_at_ridge_clock_keeps_throughput_with_20pct_less_power() -> None:
    # arXiv 2501.08219 / Tri-serve §A: decode is insensitive to clock. Tolerance: throughput
    # within 1% of max clock, power ≥20% lower, ridge clock between 1.1 and 1.5 GHz.
    phase = decode_phase()
    peak_per_mhz = H100.peak_bf16_flops_per_s * 0.04 / H100.max_clock_mhz
    ridge_mhz = H100.mem_bandwidth_bytes_per_s * 8.0 / peak_per_mhz
    assert 1100 <= ridge_mhz <= 1500
    ridge = next(c for c in H100.supported_clocks_mhz if c >= ridge_mhz)
    gpu_max, gpu_ridge = GpuModel(H100), GpuModel(H100)
    gpu_ridge.lock_clocks(ridge, ridge)
    run(gpu_max, phase, 60.0)
    run(gpu_ridge, phase, 60.0)
    assert gpu_ridge.clock_mhz == ridge
    tput_max = 1.0 / phase.at(H100, gpu_max.clock_mhz).round_s
    tput_ridge = 1.0 / phase.at(H100, gpu_ridge.clock_mhz).round_s
    assert tput_ridge == pytest.approx(tput_max, rel=0.01)
    assert gpu_ridge.power_w <= 0.8 * gpu_max.power_w


def test_counters_show_memory_bound_decode_and_its_ridge() -> None:
    # An honest controller can estimate the ridge: dram≈1, sm≈f*/f above the ridge.
    phase = decode_phase()
    op = phase.at(H100, 1980)
    assert op.dram_active == pytest.approx(1.0, abs=1e-9)
    peak_per_mhz = H100.peak_bf16_flops_per_s * 0.04 / H100.max_clock_mhz
    ridge_mhz = H100.mem_bandwidth_bytes_per_s * 8.0 / peak_per_mhz
    assert op.sm_active == pytest.approx(ridge_mhz / 1980, rel=1e-6)
    assert op.tensor_active == pytest.approx(op.sm_active * 0.15, rel=1e-6)


def test_pmu_holds_boost_clock_for_its_hold_time_after_work_stops() -> None:
    # Tri-serve D: stalls run near max clock. Hold time is a parameter (1.5 s here).
    gpu = GpuModel(H100, idle_hold_s=1.5, clock_change_latency_s=0.02)
    run(gpu, decode_phase(), 5.0)
    run(gpu, None, 1.4, dt_s=0.01)
    assert gpu.clock_mhz == 1980
    assert gpu.reasons & ClockEventReason.GPU_IDLE
    run(gpu, None, 0.3, dt_s=0.01)
    assert gpu.clock_mhz == H100.idle_clock_mhz


def test_sustained_high_ai_work_at_high_inlet_throttles_with_tens_of_seconds_tau() -> None:
    # Tri-serve T: high-A.I. phases throttle. Tolerance: thermal slowdown engages within
    # 10 min at 45 °C inlet and degraded airflow; time constant between 10 and 100 s.
    cool = GpuModel(H100, ambient_c=25.0)
    tau_s = cool.r_c_per_w * cool.c_j_per_c
    assert 10.0 <= tau_s <= 100.0
    t0 = cool.temperature_c
    run(cool, prefill_phase(), tau_s, dt_s=0.1)
    # After one time constant the rise is ~63% of the way (leakage varies power: ±0.1).
    rise = cool.temperature_c - t0
    full = cool.ambient_c + cool.power_w * cool.r_c_per_w - t0
    assert rise / full == pytest.approx(1 - math.exp(-1), abs=0.1)
    assert not cool.reasons.is_thermal  # 25 °C inlet: no throttling at 700 W
    gpu = GpuModel(H100, ambient_c=45.0, thermal_r_scale=2.0)
    gpu.set_phase(prefill_phase())
    throttled_s = 0.0
    for _ in range(6000):
        gpu.advance(0.1)
        gpu.update_clock()
        if gpu.reasons.is_thermal:
            throttled_s += 0.1
    assert throttled_s > 60.0
    assert gpu.temperature_c <= H100.slowdown_c + 1.0
    assert gpu.clock_mhz < 1700


def test_energy_counter_equals_integral_of_power() -> None:
    # NVML: the energy counter is the right source. Tolerance 0.5%.
    gpu = GpuModel(H100)
    e0 = gpu.energy_j
    integral_j = 0.0
    for phase, dur in ((prefill_phase(), 5.0), (None, 3.0), (decode_phase(), 7.0), (None, 4.0)):
        gpu.set_phase(phase)
        gpu.update_clock()
        t_end = gpu.now_s + dur
        while gpu.now_s < t_end - 1e-9:
            integral_j += gpu.power_w * 0.05
            gpu.advance(0.05)
            gpu.update_clock()
    assert gpu.energy_j - e0 == pytest.approx(integral_j, rel=0.005)
