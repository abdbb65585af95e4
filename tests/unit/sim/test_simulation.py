"""The Simulation API as the controllers, agent and benchmarks use it."""

from __future__ import annotations

import pytest

from triserve.gpu.backend import ClockEventReason, GpuPermissionError
from triserve.sim import ORACLE_WARNING, Simulation, load_scenario
from triserve.sim.backend import SimBackend


@pytest.fixture
def sim() -> Simulation:
    s = Simulation(load_scenario("reference"), seed=0)
    s.run_until(90.0)
    return s


def test_placements_follow_qwen3_omni_default() -> None:
    sim = Simulation(load_scenario("reference"))
    by_stage = {p.stage: p for p in sim.placements}
    assert by_stage["thinker"].gpu_index == 0
    assert by_stage["talker"].gpu_index == 1 and by_stage["code2wav"].gpu_index == 1
    assert by_stage["talker"].upstream == ("thinker",)
    assert by_stage["code2wav"].kind == "oneshot"
    assert by_stage["thinker"].pod


def test_same_seed_same_run_different_seed_different_run() -> None:
    def energy(seed: int) -> float:
        s = Simulation(load_scenario("reference"), seed=seed)
        s.run_until(60.0)
        return s.backend.total_energy_mj(0)

    assert energy(1) == energy(1)
    assert energy(1) != energy(2)


def test_ticks_are_called_every_tick() -> None:
    sim = Simulation(load_scenario("reference"))
    seen: list[float] = []
    sim.run_until(1.0, on_tick=seen.append, tick_s=0.05)
    assert len(seen) == 20
    assert seen[-1] == pytest.approx(1.0)
    assert sim.now_s == pytest.approx(1.0)


def test_serving_snapshot_counts_work(sim: Simulation) -> None:
    snap = sim.serving_snapshot("thinker")
    assert snap.timestamp_s == pytest.approx(90.0)
    assert snap.prompt_tokens_total > 0 and snap.generation_tokens_total > 0
    assert snap.requests_finished_total > 0
    assert snap.ttft is not None and snap.ttft.count > 0
    assert snap.e2e is not None and snap.e2e.quantile_s(0.5) is not None
    assert sim.serving_snapshot("code2wav").requests_finished_total > 0


def test_serving_exposition_is_vllm_format(sim: Simulation) -> None:
    text = sim.serving_exposition("talker")
    assert 'vllm:num_requests_running{model_name="Qwen/Qwen3-Omni-30B-A3B-Instruct"' in text
    assert "vllm:time_to_first_token_seconds_bucket{" in text and 'le="+Inf"' in text
    assert "vllm:generation_tokens_total" in text


def test_dcgm_exposition_has_fields_and_pod_labels(sim: Simulation) -> None:
    text = sim.dcgm_exposition("node-1")
    for name in (
        "DCGM_FI_DEV_SM_CLOCK",
        "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
        "DCGM_FI_PROF_DRAM_ACTIVE",
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
    ):
        assert f"{name}{{" in text
    assert 'Hostname="node-1"' in text and 'pod="qwen3-omni-thinker-0"' in text
    assert 'modelName="NVIDIA H100 80GB HBM3"' in text


def test_report_has_latency_energy_and_throughput(sim: Simulation) -> None:
    rep = sim.report()
    assert rep.completed_requests > 0 and rep.throughput_rps > 0
    assert rep.e2e_p50_s is not None and rep.e2e_p99_s is not None
    assert rep.e2e_p50_s <= rep.e2e_p99_s
    assert len(rep.e2e_s) == rep.completed_requests
    assert rep.energy_j == pytest.approx(sum(g.energy_j for g in rep.gpus))
    assert sum(rep.gpus[0].clock_band_s.values()) == pytest.approx(rep.window_s)
    d = rep.to_dict()
    assert "stall_high_clock_s" in d and "mean_clock_mhz_by_phase" in d


def test_lock_is_a_ceiling_under_the_power_limit() -> None:
    sim = Simulation(load_scenario("hot"), seed=0)
    b = sim.backend
    b.lock_sm_clocks(0, 1980, 1980)
    b.set_power_limit_mw(0, 300_000)
    seen_capped = False

    def tick(now_s: float) -> None:
        nonlocal seen_capped
        s = b.sample(0)
        if s.clock_event_reasons & ClockEventReason.SW_POWER_CAP:
            seen_capped = True
            assert s.sm_clock_mhz < 1980
        assert s.power_mw <= 300_000 * 1.01

    sim.run_until(60.0, on_tick=tick)
    assert seen_capped
    assert b.locked_sm_clocks_mhz(0) == (1980, 1980)


def test_locked_low_clock_applies_after_latency_and_drops_power() -> None:
    sim = Simulation(load_scenario("reference"), seed=0)
    sim.run_until(20.0)
    b = sim.backend
    b.lock_sm_clocks(1, 345, 345)
    sim.run_until(20.1)
    assert b.sm_clock_mhz(1) == 345
    b.reset_sm_clocks(1)
    assert b.locked_sm_clocks_mhz(1) is None


def test_unprivileged_backend_refuses_setters() -> None:
    sim = Simulation(load_scenario("reference"))
    b = SimBackend(sim, privileged=False)
    with pytest.raises(GpuPermissionError, match="CAP_SYS_ADMIN"):
        b.lock_sm_clocks(0, 345, 1980)
    assert b.sm_clock_mhz(0) > 0


def test_oracle_view_is_labelled_and_sees_the_future(sim: Simulation) -> None:
    view = sim.oracle_view(horizon_s=60.0)
    assert view.warning == ORACLE_WARNING and "ORACLE ONLY" in view.warning
    segs = [s for g in view.segments.values() for s in g]
    assert segs and all(s.start_s >= sim.now_s - 1e-9 for s in segs)
    assert any(s.kind == "prefill" and s.start_s > sim.now_s for s in segs)


def test_advance_to_follows_time_without_ticks() -> None:
    sim = Simulation(load_scenario("reference"))
    sim.advance_to(3.5)
    assert sim.now_s == pytest.approx(3.5)
