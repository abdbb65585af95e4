"""Calibration of the simulator against published figures (sources: docs/calibration.md).

Each test drives a simulated GPU (`GpuModel`) or a whole `Simulation` and checks a
published measurement or documented counter meaning, within the tolerance stated in the
test. None of them checks the simulator against its own formulas.
"""

from __future__ import annotations

import math
import re
import statistics

import pytest

from triserve.gpu.backend import ClockEventReason
from triserve.sim import Simulation, load_scenario, with_overrides
from triserve.sim.physics import GpuModel, Kernel, Phase
from triserve.sim.profiles import get_profile
from triserve.sim.scenario import DecodeSpec, PrefillSpec

pytestmark = pytest.mark.calibration

H100 = get_profile("h100-sxm")


def _default(spec: type[DecodeSpec] | type[PrefillSpec], name: str) -> float:
    value = spec.model_fields[name].default
    assert isinstance(value, float)
    return value


def decode_phase(ai: float = 8.0) -> Phase:
    """A memory-bound decode step (AI≈8) with the scenario defaults for a batch of ≥4."""
    nbytes = 64e9
    kernel = Kernel(
        ai * nbytes,
        nbytes,
        0.04,
        0.15,
        sm_fill=_default(DecodeSpec, "sm_fill"),
        occupancy=_default(DecodeSpec, "occupancy"),
        clock_share=_default(DecodeSpec, "clock_sensitive_share"),
    )
    return Phase("decode", (kernel,))


def prefill_phase() -> Phase:
    """A compute-bound prefill-like phase (AI 600, tensor heavy), scenario defaults."""
    nbytes = 1e9
    kernel = Kernel(
        600 * nbytes,
        nbytes,
        0.6,
        0.9,
        sm_fill=_default(PrefillSpec, "sm_fill"),
        occupancy=_default(PrefillSpec, "occupancy"),
    )
    return Phase("prefill", (kernel,))


def run(gpu: GpuModel, phase: Phase | None, duration_s: float, dt_s: float = 0.05) -> None:
    gpu.set_phase(phase)
    gpu.update_clock()
    t_end = gpu.now_s + duration_s
    while gpu.now_s < t_end - 1e-9:
        gpu.advance(min(dt_s, t_end - gpu.now_s))
        gpu.update_clock()


def test_idle_power_at_idle_clock_is_75_w() -> None:
    # Public nvidia-smi readings: H100 SXM idles at ≈75 W at 345 MHz. Tolerance ±5 W.
    gpu = GpuModel(H100)
    run(gpu, None, 120.0)
    assert gpu.clock_mhz == 345
    assert gpu.power_w == pytest.approx(75.0, abs=5.0)


def test_idle_at_high_clock_costs_clearly_more_than_idle_at_low_clock() -> None:
    # arXiv 2605.23918: a live CUDA context adds 26-50 W over bare idle on HBM parts: ≥25 W.
    gpu = GpuModel(H100)
    assert gpu.power_at(1980, None, 40.0) - gpu.power_at(345, None, 40.0) >= 25.0


def test_sustained_compute_bound_work_is_power_limited_below_max_clock() -> None:
    # Splitwise (ISCA 2024): H100 prefill draws the 700 W limit; TileOPs issue 1587.
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


def _locked_decode(clock_mhz: int) -> tuple[float, float]:
    """(step time s, energy per step J) of sustained decode locked at `clock_mhz`."""
    phase = decode_phase()
    gpu = GpuModel(H100)
    gpu.lock_clocks(clock_mhz, clock_mhz)
    run(gpu, phase, 30.0)
    assert gpu.clock_mhz == clock_mhz
    step_s = phase.at(H100, clock_mhz).round_s
    return step_s, gpu.power_w * step_s


def test_decode_down_clock_saves_energy_for_a_few_percent_of_latency() -> None:
    # arXiv 2605.11999 (H200): locking SM clocks recovers up to 32% of decode energy at
    # minimal throughput loss; arXiv 2501.08219: 42% energy for 1-6% more latency.
    # Tolerance: some clock saves ≥20% energy per decode step for 1-6% more step time.
    base_s, base_j = _locked_decode(1980)
    best_saving = 0.0
    for clock in H100.supported_clocks_mhz[::4]:
        step_s, energy_j = _locked_decode(clock)
        if 1.01 <= step_s / base_s <= 1.06:
            best_saving = max(best_saving, 1.0 - energy_j / base_j)
    assert best_saving >= 0.20


def test_decode_below_boost_is_not_free_and_slows_sub_linearly() -> None:
    # Published DVFS curves report a latency cost for every down-clock of decode, smaller
    # than the clock cut: VoltanaLLM, A100 1410 -> 1005 MHz (-28.7%) raises time
    # sub-linearly. Same relative cut on H100 (1980 -> 1410 MHz): slower by 0.5-28.7%.
    base_s, _ = _locked_decode(1980)
    cut_s, _ = _locked_decode(1410)
    assert 1.005 <= cut_s / base_s < 1980 / 1410


def test_prefill_time_scales_with_one_over_clock() -> None:
    # Prefill is compute-bound (Splitwise; GreenLLM fits prefill latency vs SM frequency):
    # halving the clock doubles its time. Tolerance 1%.
    phase = prefill_phase()
    assert phase.at(H100, 990).round_s == pytest.approx(2 * phase.at(H100, 1980).round_s, rel=0.01)


def test_memory_bound_kernel_reads_sm_active_near_one_at_low_compute() -> None:
    # NVIDIA forum Nsight Compute example: a kernel at 95% DRAM throughput and 9% compute
    # throughput had ~98% SM active cycles. Our decode defaults: SM active ≥0.95 while the
    # tensor pipe is ≤0.1 busy; DCGM guidance: DRAM active tops out near 0.8 (0.75-0.85).
    op = decode_phase().at(H100, 1980)
    assert op.sm_active >= 0.95
    assert op.tensor_active <= 0.1
    assert 0.75 <= op.dram_active <= 0.85


def test_tensor_pipe_reads_achieved_over_peak_not_busy_time() -> None:
    # DCGM PIPE_TENSOR_ACTIVE: share of cycles the pipe is busy, i.e. achieved tensor
    # FLOP/s over the peak at the current clock. A GEMM at 60% efficiency and 90% tensor
    # share reads ≈0.54, at the boost clock and power-capped alike (±0.02), never ≈1.
    phase = prefill_phase()
    assert phase.at(H100, 1980).tensor_active == pytest.approx(0.54, abs=0.02)
    assert phase.at(H100, 1500).tensor_active == pytest.approx(0.54, abs=0.02)


def memory_bound_decode_sim(dcgm_fields: str = "profiling") -> Simulation:
    """The reference node with a decode-heavy, memory-bound thinker and 1 s DCGM."""
    sc = with_overrides(
        load_scenario("reference"),
        {
            "pipeline.stages.0.decode.flops_per_token": 6.4e9,
            "workload.rate_rps": 1.0,
            "workload.output_tokens": {"p50": 300, "p90": 380, "max": 400},
            "telemetry.dcgm_interval_s": 1.0,
            "telemetry.dcgm_fields": dcgm_fields,
        },
    )
    return Simulation(sc, seed=3)


def dcgm_value(text: str, field: str, gpu: int) -> float:
    """The value of `field` for GPU `gpu` in a dcgm-exporter exposition."""
    m = re.search(rf'^{field}{{gpu="{gpu}",[^}}]*}} (\S+)$', text, re.MULTILINE)
    assert m is not None, f"{field} for GPU {gpu} missing"
    return float(m.group(1))


def test_memory_bound_decode_reads_busy_sms_and_unsaturated_dram_in_dcgm_and_gpm() -> None:
    # Issue "Done when": SM activity ≥0.8 and DRAM activity ≤0.92 during memory-bound
    # decode, in both the dcgm-exporter output (profiling fields on) and the GPM sample.
    # DCGM guidance: SM activity ≥0.8 is what filling the GPU looks like; DRAM active peaks
    # near 0.8 in practice.
    sim = memory_bound_decode_sim()
    gpm: list[tuple[float, float]] = []
    dcgm: list[tuple[float, float]] = []

    def tick(now_s: float) -> None:
        s = sim.backend.sample(0)
        if s.activity is not None and s.utilization_gpu_pct >= 99:
            gpm.append((s.activity.sm_active, s.activity.dram_active))
        text = sim.dcgm_exposition()
        if dcgm_value(text, "DCGM_FI_PROF_GR_ENGINE_ACTIVE", 0) >= 0.99:
            dcgm.append(
                (
                    dcgm_value(text, "DCGM_FI_PROF_SM_ACTIVE", 0),
                    dcgm_value(text, "DCGM_FI_PROF_DRAM_ACTIVE", 0),
                )
            )

    sim.run_until(120.0, on_tick=tick, tick_s=1.0)
    assert len(gpm) >= 30 and len(dcgm) >= 30
    for reads in (gpm, dcgm):
        assert statistics.median(sm for sm, _ in reads) >= 0.8
        assert max(dram for _, dram in reads) <= 0.92
        assert 0.6 <= statistics.median(dram for _, dram in reads) <= 0.85


def test_pmu_holds_boost_clock_for_its_hold_time_after_work_stops() -> None:
    # Tri-serve D: stalls run near max clock. The hold is not published: pmu.idle_hold_s.
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
    # NVML docs, arXiv 2312.02741: energy comes from the energy counter. Tolerance 0.5%.
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
