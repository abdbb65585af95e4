"""Component A: each ridge source finds a memory-bound phase's ridge from real signals."""

from __future__ import annotations

from dataclasses import replace

from triserve.control import ControlSettings, IntensitySource, Reason
from triserve.control.intensity import IntensityEstimator
from triserve.control.profiling import sweep
from triserve.control.tristrategy import TriServeStrategy
from triserve.sim import Phase, Simulation

from .conftest import drive, short

LOSS = 0.005


def _ridge(sim: Simulation, gpu: int, phases: list[Phase], loss: float = LOSS) -> int:
    """Simulator truth: the lowest clock at which these phases lose at most `loss` speed."""
    profile = sim.gpus[gpu].profile
    clocks = profile.supported_clocks_mhz
    top = profile.max_clock_mhz

    def slow(c: int) -> float:
        return sum(p.at(profile, c).round_s for p in phases) / sum(
            p.at(profile, top).round_s for p in phases
        )

    return next(c for c in clocks if slow(c) <= 1 + loss)


def _decode_phases(run: object, gpu: int) -> list[Phase]:
    ticks = run.ticks[gpu]  # type: ignore[attr-defined]
    return [t.phase_obj for t in ticks if t.phase == "decode" and t.phase_obj is not None]


def test_online_search_settles_near_the_true_ridge_of_decode() -> None:
    settings = replace(
        ControlSettings().only("A"),
        intensity_source=IntensitySource.SEARCH,
        ridge_floor_fraction=0.0,
        slo_guard=False,
        first_token_floor=False,
    )
    run = drive(short("reference", 150.0), settings)
    strategy = run.loops[0].strategy
    assert isinstance(strategy, TriServeStrategy)
    keys = strategy.intensity.search.keys
    state = keys.get((("thinker", "decode"),))
    assert state is not None and state.trials >= 2, keys
    # The loss the search was allowed (the latency bound's planned share on an unqueued GPU).
    allowed = strategy.intensity.search.max_loss
    assert allowed > LOSS, "unqueued, the search may use the latency bound, not the throughput's"
    truth = _ridge(run.sim, 0, _decode_phases(run, 0), allowed)
    boost = run.loops[0].limits.default_max_mhz
    # Within a coarse step above, never far below the truth (which would cost speed).
    assert truth - 0.05 * boost <= state.ok_mhz <= truth + 0.2 * boost, (state, truth)
    searched = [t for t in run.ticks[0] if t.decision.source == "search"]
    assert searched and all("ridge" in t.decision.message for t in searched)


def test_profile_sweep_finds_the_ridge_the_physics_has() -> None:
    sim = Simulation(short("reference", 400.0), seed=1)
    sim.run_until(20.0)
    decode: list[Phase] = []

    def wait(seconds: float) -> None:
        end = sim.now_s + seconds

        def look(now_s: float) -> None:
            phase = sim.gpus[0].phase
            if phase is not None and phase.kind == "decode":
                decode.append(phase)

        sim.run_until(end, on_tick=look, tick_s=0.1)

    prof = sweep(sim.backend, 0, "thinker", lambda: sim.serving_snapshot("thinker"), wait,
                 window_s=8.0, points=10)  # fmt: skip
    assert sim.backend.locked_sm_clocks_mhz(0) is None, "the sweep must hand the GPU back"
    truth = _ridge(sim, 0, decode)
    found = prof.ridges_mhz["decode"]
    boost = prof.boost_mhz
    assert truth - 0.1 * boost <= found <= truth + 0.2 * boost, (prof.ridges_mhz, truth)


def test_a_profile_locks_its_clock_in_decode_and_boosts_prefill() -> None:
    settings = replace(
        ControlSettings().only("A"),
        intensity_source=IntensitySource.PROFILE,
        ridge_profile=(("thinker", "decode", 1185), ("talker", "decode", 1290)),
        slo_guard=False,
        first_token_floor=False,
    )
    run = drive(short("reference", 40.0), settings)
    profiled = [t for t in run.ticks[0] if t.decision.source == "profile"]
    assert profiled
    for t in profiled:
        assert t.decision.reason is Reason.RIDGE
        assert t.decision.target_sm_clock_mhz is not None
        assert 1185 <= t.decision.target_sm_clock_mhz <= 1185 * 1.1
    prefill = [t for t in run.ticks[0] if t.phase == "prefill" and t.decision.source == ""]
    assert any(t.decision.reason is Reason.COMPUTE for t in prefill)


def test_counter_estimate_needs_per_tick_pipe_counters() -> None:
    settings = replace(
        ControlSettings().only("A"), intensity_source=IntensitySource.COUNTERS, slo_guard=False
    )
    hopper = drive(short("reference", 30.0), settings)
    assert any(t.decision.source == "counters" for t in hopper.ticks[0])
    ampere = drive(short("a100", 30.0), settings)
    sources = {t.decision.source for ticks in ampere.ticks.values() for t in ticks}
    assert "counters" not in sources, "A100 has no GPM: the estimate must not be used"
    assert "search" in sources


def test_near_saturation_the_search_accepts_less_loss_of_rate() -> None:
    """A rate loss eps costs a queued request eps / (1 - rho): the bound shrinks with load."""
    est = IntensityEstimator(IntensitySource.SEARCH, 4.0, 0.35, 0.5, latency_bound_pct=1.0)
    for _ in range(100):
        est.observe_load(queued=False, dt_s=1.0)
    # Unqueued, a slower step costs no throughput (the stage keeps up): latency bounds it.
    assert abs(est.search.max_loss - 0.01) < 1e-9, "an unqueued GPU may use the latency bound"
    for _ in range(300):
        est.observe_load(queued=True, dt_s=1.0)
    half = est.queued_share
    assert 0.8 < half < 0.95
    # Queued a share rho of the time: a queued request waits eps / (1 - rho) longer.
    assert abs(est.search.max_loss - 0.01 * (1.0 - half)) < 1e-9
    for _ in range(2000):
        est.observe_load(queued=True, dt_s=0.5)
    assert est.queued_share > 0.95
    assert est.search.max_loss < 0.0005, "queued nearly always: almost no loss is accepted"
