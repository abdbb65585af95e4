"""What the simulated node's counters look like to a reader: windows, ages, fields, noise."""

from __future__ import annotations

import pytest

from triserve.sim import ScenarioError, Simulation, load_scenario, with_overrides

from .test_calibration import dcgm_value, memory_bound_decode_sim


def test_dcgm_default_fields_omit_sm_activity_like_dcgm_exporter() -> None:
    # dcgm-exporter's default-counters.csv leaves SM_ACTIVE and SM_OCCUPANCY commented out.
    sim = memory_bound_decode_sim(dcgm_fields="default")
    sim.run_until(5.0)
    text = sim.dcgm_exposition()
    assert "DCGM_FI_PROF_DRAM_ACTIVE{" in text and "DCGM_FI_PROF_GR_ENGINE_ACTIVE{" in text
    assert "DCGM_FI_PROF_SM_ACTIVE" not in text and "DCGM_FI_PROF_SM_OCCUPANCY" not in text
    profiling = memory_bound_decode_sim(dcgm_fields="profiling")
    profiling.run_until(5.0)
    assert "DCGM_FI_PROF_SM_ACTIVE{" in profiling.dcgm_exposition()


def test_dcgm_values_hold_between_collections_and_change_at_the_interval() -> None:
    # dcgm-exporter reports its last collection: nothing moves between two boundaries.
    sc = with_overrides(load_scenario("reference"), {"telemetry.dcgm_interval_s": 30.0})
    sim = Simulation(sc, seed=0)
    sim.run_until(31.0)
    first = sim.dcgm_exposition()
    sim.run_until(59.0)
    assert sim.dcgm_exposition() == first
    sim.run_until(61.0)
    later = sim.dcgm_exposition()
    assert dcgm_value(later, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 0) > dcgm_value(
        first, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 0
    )


def test_nvml_utilisation_is_an_integer_percent_of_the_last_completed_period() -> None:
    # NVML: percent of the past sample period (1/6 s to 1 s) a kernel ran; here 1 s.
    sc = with_overrides(load_scenario("reference"), {"telemetry.util_period_s": 1.0})
    sim = Simulation(sc, seed=0)
    readings: list[tuple[float, float, bool]] = []

    def tick(now_s: float) -> None:
        pct = sim.backend.utilization_gpu_pct(0)
        readings.append((now_s, pct, sim.gpus[0].phase is not None))

    sim.run_until(60.0, on_tick=tick, tick_s=0.1)
    assert all(pct == int(pct) and 0 <= pct <= 100 for _, pct, _ in readings)
    # Within one period the reading does not move, whatever the GPU does meanwhile.
    by_period: dict[int, set[float]] = {}
    for now_s, pct, _ in readings:
        by_period.setdefault(int(now_s + 1e-9), set()).add(pct)
    assert all(len(v) == 1 for v in by_period.values())
    # The first read after work starts still shows the idle period before it.
    starts = [i for i in range(1, len(readings)) if readings[i][2] and not readings[i - 1][2]]
    assert starts
    assert any(readings[i][1] < 100 for i in starts)


def test_gpm_activity_exists_on_hopper_only() -> None:
    # GPM (NVML GPU performance monitoring) needs Hopper or newer: A100 and L40S read None,
    # like NvmlBackend; DCGM still exports profiling fields for them.
    for name, has_gpm in (("a100", False), ("l40s", False), ("reference", True)):
        sim = Simulation(load_scenario(name), seed=0)
        sim.run_until(20.0, on_tick=lambda now_s: None)
        sim.backend.sample(0)
        sim.run_until(40.0)
        assert (sim.backend.sample(0).activity is not None) is has_gpm, name
        assert "DCGM_FI_PROF_DRAM_ACTIVE{" in sim.dcgm_exposition()


def test_counter_noise_is_seeded() -> None:
    def reads(seed: int) -> list[float]:
        sim = Simulation(load_scenario("reference"), seed=seed)
        out: list[float] = []

        def tick(now_s: float) -> None:
            act = sim.backend.activity(1)
            if act is not None:
                out.append(act.sm_active)

        sim.run_until(30.0, on_tick=tick, tick_s=0.5)
        return out

    assert reads(4) == reads(4)
    assert reads(4) != reads(5)


def test_graphics_engine_activity_is_never_below_sm_activity() -> None:
    # DCGM: GR_ENGINE_ACTIVE (any kernel running) ≥ SM_ACTIVE (warps resident on SMs).
    sim = memory_bound_decode_sim()
    seen = 0

    def tick(now_s: float) -> None:
        nonlocal seen
        act = sim.backend.sample(0).activity
        if act is not None and act.gr_engine_active is not None and act.sm_active > 0:
            seen += 1
            # Both carry independent noise of a few percent: allow for it.
            assert act.gr_engine_active >= act.sm_active - 0.1

    sim.run_until(60.0, on_tick=tick, tick_s=0.5)
    assert seen > 20


def test_ideal_counters_are_an_explicit_option_with_the_old_identities() -> None:
    # `counters: ideal` is kept only as a named reference: DRAM activity reaches 1 and SM
    # activity is the compute share, so f·sm/dram is the ridge — unlike real counters.
    sc = with_overrides(load_scenario("a100"), {"telemetry.counters": "ideal"})
    sim = Simulation(sc, seed=0)
    sim.backend.sample(0)
    sim.run_until(20.0)
    assert sim.backend.sample(0).activity is not None  # present even without GPM, as before
    mb = memory_bound_decode_sim()
    ideal = Simulation(with_overrides(mb.scenario, {"telemetry.counters": "ideal"}), seed=3)
    drams: list[float] = []

    def tick(now_s: float) -> None:
        act = ideal.backend.sample(0).activity
        if act is not None and ideal.gpus[0].phase is not None:
            drams.append(act.dram_active)

    ideal.run_until(60.0, on_tick=tick, tick_s=1.0)
    assert max(drams) > 0.95
    with pytest.raises(ScenarioError, match=r"telemetry\.counters"):
        with_overrides(load_scenario("reference"), {"telemetry.counters": "exact"})


def test_overrides_name_the_missing_field() -> None:
    with pytest.raises(ScenarioError, match=r"pmu\.idle_hold"):
        with_overrides(load_scenario("reference"), {"pmu.idle_hold": 1.0})
    sc = with_overrides(load_scenario("reference"), {"pmu.idle_hold_s": 10.0})
    assert sc.pmu.idle_hold_s == 10.0 and load_scenario("reference").pmu.idle_hold_s == 1.5
    assert Simulation(sc).gpus[0].idle_hold_s == 10.0
