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


#: A Qwen3-Omni-thinker-like decode step: 3.3B active parameters (6.6 GFLOP per token),
#: the bundled scenarios' effective weight and KV traffic.
THINKER = DecodeSpec(weight_bytes=6.0e10, bytes_per_seq=5.0e8, flops_per_token=6.6e9)


def decode_phase(batch: int = 16, spec: DecodeSpec = THINKER) -> Phase:
    """One decode step of `batch` sequences, as the simulated engines build it."""
    kernel = Kernel(
        spec.flops_per_token * batch,
        spec.weight_bytes + spec.bytes_per_seq * batch,
        spec.efficiency,
        spec.tensor_share,
        sm_fill=spec.sm_fill,
        occupancy=spec.occupancy,
        clock_share=spec.clock_share(batch),
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


#: arXiv 2605.23918 (controlled runs): idle power without and with a CUDA context, in W.
PARKING_TAX_W = {"h100-sxm": (71.8, 121.7), "a100-sxm-80gb": (53.7, 80.0), "l40s": (35.6, 102.1)}


@pytest.mark.parametrize("key", sorted(PARKING_TAX_W))
def test_idle_power_without_and_with_a_context_matches_the_parking_tax_study(key: str) -> None:
    # Tolerance ±3 W on each figure, after minutes idle at 25 °C inlet.
    bare_w, context_w = PARKING_TAX_W[key]
    profile = get_profile(key)
    bare = GpuModel(profile, context_resident=False)
    served = GpuModel(profile)
    run(bare, None, 300.0, dt_s=1.0)
    run(served, None, 300.0, dt_s=1.0)
    assert bare.clock_mhz == profile.idle_clock_mhz
    assert bare.power_w == pytest.approx(bare_w, abs=3.0)
    assert served.power_w == pytest.approx(context_w, abs=3.0)


def test_a_resident_context_holds_the_boost_state_until_perf_boost_is_disabled() -> None:
    # arXiv 2605.23918: the context's DVFS state is held while the GPU idles, until the
    # context goes. CUDA_DISABLE_PERF_BOOST=1 lets idle clocks drop as on a bare GPU; users
    # report 26-66 W recovered per idle GPU (sglang issue 27567).
    held = GpuModel(H100)
    run(held, decode_phase(), 5.0)
    run(held, None, 600.0, dt_s=0.5)
    assert held.clock_mhz == H100.max_clock_mhz
    assert held.reasons & ClockEventReason.GPU_IDLE
    off = GpuModel(H100, perf_boost=False)
    run(off, decode_phase(), 5.0)
    run(off, None, 600.0, dt_s=0.5)
    assert off.clock_mhz == H100.idle_clock_mhz
    assert 26.0 <= held.power_w - off.power_w <= 66.0


def test_sustained_compute_bound_work_is_power_limited_below_max_clock() -> None:
    # Splitwise (ISCA 2024): H100 prefill draws the 700 W limit; TileOPs issue 1587.
    # Tolerance: power within 2% under 700 W; clock at least one step below 1980 MHz.
    gpu = GpuModel(H100)
    run(gpu, prefill_phase(), 60.0)
    assert gpu.power_w <= 700.0
    assert gpu.power_w == pytest.approx(700.0, rel=0.02)
    assert gpu.clock_mhz < 1980
    assert gpu.reasons & ClockEventReason.SW_POWER_CAP


@pytest.mark.parametrize(
    ("key", "low_w", "high_w"), [("h100-sxm", 300, 420), ("a100-sxm-80gb", 210, 290)]
)
def test_decode_power_at_max_clock_matches_the_splitwise_power_model(
    key: str, low_w: float, high_w: float
) -> None:
    # Splitwise power model: decode draws ≈380 W on H100 and ≈250 W on A100 (±10-15%).
    profile = get_profile(key)
    gpu = GpuModel(profile)
    run(gpu, decode_phase(), 30.0)
    assert gpu.clock_mhz == profile.max_clock_mhz
    assert low_w <= gpu.power_w <= high_w


def _locked_decode(phase: Phase, clock_mhz: int) -> tuple[float, float]:
    """(step time s, energy per step J) of sustained decode locked at `clock_mhz` on H100."""
    gpu = GpuModel(H100)
    gpu.lock_clocks(clock_mhz, clock_mhz)
    run(gpu, phase, 20.0, dt_s=0.5)
    assert gpu.clock_mhz == clock_mhz
    step_s = phase.at(H100, clock_mhz).round_s
    return step_s, gpu.power_w * step_s


def _best_saving(phase: Phase, max_slowdown: float) -> float:
    """The largest energy saving per decode step among locks within `max_slowdown`."""
    base_s, base_j = _locked_decode(phase, H100.max_clock_mhz)
    best = 0.0
    for clock in H100.supported_clocks_mhz[::2]:
        step_s, energy_j = _locked_decode(phase, clock)
        if step_s / base_s <= 1.0 + max_slowdown:
            best = max(best, 1.0 - energy_j / base_j)
    return best


def decode_band_violations(spec: DecodeSpec) -> list[str]:
    """Where `spec`'s decode leaves the published decode-vs-clock band (empty if inside).

    arXiv 2605.11999 (H200): locking SM clocks recovers *up to* 32% of decode energy at
    minimal throughput loss: within 1% more step time no lock saves over 36% (4 points of
    tolerance). arXiv 2501.08219: a deep down-clock saves 42% on average for 1-6% more
    latency: within 6% some lock saves at least 35%. VoltanaLLM (A100, 1410 -> 1005 MHz,
    -28.7%): slower, but by less than the cut. Checked at batch 1 and 16.
    """
    out = []
    for batch in (1, 16):
        phase = decode_phase(batch, spec)
        minimal = _best_saving(phase, 0.01)
        if minimal > 0.36:
            out.append(f"batch {batch}: {minimal:.0%} saved within 1% (published: up to 32%)")
        deep = _best_saving(phase, 0.06)
        if deep < 0.35:
            out.append(f"batch {batch}: only {deep:.0%} saved within 6% (published: 42%)")
        base_s, _ = _locked_decode(phase, 1980)
        cut_s, _ = _locked_decode(phase, 1410)
        if not 1.002 <= cut_s / base_s < 1980 / 1410:
            out.append(f"batch {batch}: a 29% cut slows decode x{cut_s / base_s:.3f}")
    return out


def test_default_decode_sits_in_the_published_decode_versus_clock_band() -> None:
    assert decode_band_violations(THINKER) == []


def test_every_bundled_scenarios_decode_sits_in_the_published_band() -> None:
    for name in ("reference", "a100", "l40s", "hot", "bursty", "reference-high", "trace"):
        for stage in load_scenario(name).pipeline.stages:
            if stage.decode is not None:
                assert decode_band_violations(stage.decode) == [], (name, stage.name)


@pytest.mark.parametrize("share", [0.005, 0.1])
def test_the_decode_band_rejects_clock_sensitive_shares_outside_it(share: float) -> None:
    # The share decides component A: a band that any share passes constrains nothing.
    assert decode_band_violations(THINKER.model_copy(update={"clock_sensitive_share": share}))


def test_memory_bound_kernel_reads_sm_active_near_one_at_low_compute() -> None:
    # NVIDIA forum Nsight Compute example: a kernel at 95% DRAM throughput and 9% compute
    # throughput had ~98% SM active cycles. Our decode defaults: SM active ≥0.95 while the
    # tensor pipe is ≤0.1 busy; DCGM guidance: DRAM active tops out near 0.8 (0.75-0.85).
    op = decode_phase().at(H100, 1980)
    assert op.sm_active >= 0.95
    assert op.tensor_active <= 0.1
    assert 0.75 <= op.dram_active <= 0.85


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
