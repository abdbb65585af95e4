"""Component P: a GPU that feeds a queued stage elsewhere is capped, and freed when it drains."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.decode_stage import DecodeStage
from triserve.control import (
    ControlSettings,
    Decision,
    DeviceLimits,
    IntensitySource,
    Reason,
    StageSignals,
    TickContext,
)
from triserve.control.pipeline import PipelineGovernor, protect, queue_view
from triserve.control.search import Mode, RidgeSearch
from triserve.control.tristrategy import TriServeStrategy, _pipeline_capped
from triserve.sim import Simulation, load_scenario
from triserve.telemetry import DownstreamStage, ServingSnapshot, StageHint, StageObservation

P = ControlSettings(pipeline_enabled=True)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def limits() -> DeviceLimits:
    """An H100 SXM's clock envelope, read from the simulated backend."""
    return DeviceLimits.from_backend(Simulation(load_scenario("reference")).backend, 0)


def _snap(now_s: float, waiting: int) -> ServingSnapshot:
    return ServingSnapshot(now_s, 4, waiting, 0.0, 0.0, 0.0)


def thinker(now_s: float, talker_waiting: int | None, own_waiting: int = 0) -> StageObservation:
    """The thinker on its own GPU, feeding a talker on another GPU with `talker_waiting`."""
    down = () if talker_waiting is None else (_peer("talker", now_s, talker_waiting),)
    return StageObservation(
        "thinker", serving=_snap(now_s, own_waiting), max_age_s=5.0, downstream=down
    )


def _peer(stage: str, now_s: float, waiting: int) -> DownstreamStage:
    return DownstreamStage(stage, serving=_snap(now_s, waiting), max_age_s=5.0)


def _feed(
    gov: PipelineGovernor, limits: DeviceLimits, waiting: int, t0_s: float, t1_s: float
) -> list[int | None]:
    """Tick every 50 ms from t0 to t1 with the talker's queue at `waiting`."""
    out = []
    n = round((t1_s - t0_s) / 0.05)
    for i in range(n):
        now_s = t0_s + i * 0.05
        out.append(gov.update(now_s, [thinker(now_s, waiting)], limits))
    return out


def test_a_lasting_downstream_queue_caps_the_upstream_gpu_after_the_sustain_time(
    limits: DeviceLimits,
) -> None:
    gov = PipelineGovernor(P)
    assert _feed(gov, limits, 6, 0.0, 1.95) == [None] * 39  # within the 2 s sustain time
    capped = _feed(gov, limits, 6, 1.95, 12.0)
    assert all(c is not None for c in capped[1:])
    first, last = capped[1], capped[-1]
    assert first is not None and last is not None
    assert first < limits.default_max_mhz
    # It steps down over time, to the policy's floor and no further.
    assert last < first
    assert last == limits.snap_up(0.6 * limits.default_max_mhz)
    assert "talker has 6 requests waiting" in gov.message


def test_the_cap_holds_in_the_hysteresis_band_and_goes_at_once_when_the_queue_drains(
    limits: DeviceLimits,
) -> None:
    settings = replace(P, pipeline_queued_requests=4)  # queued at 4, drained below 2
    gov = PipelineGovernor(settings)
    _feed(gov, limits, 5, 0.0, 5.0)
    held = _feed(gov, limits, 2, 5.0, 6.0)
    assert all(c is not None and c < limits.default_max_mhz for c in held)
    assert _feed(gov, limits, 1, 6.0, 6.1) == [None, None]
    assert "drained" in gov.message
    # A new queue waits out the sustain time again.
    assert _feed(gov, limits, 5, 6.1, 8.0)[0] is None


def test_no_cap_while_the_latency_guard_holds_clocks_back(limits: DeviceLimits) -> None:
    gov = PipelineGovernor(P)
    _feed(gov, limits, 6, 0.0, 5.0)
    assert gov.capping
    assert gov.update(5.0, [thinker(5.0, 6)], limits, guard_active=True) is None
    assert not gov.capping and "guard" in gov.message
    # After the guard lets go, the queue must last the sustain time again.
    assert gov.update(5.05, [thinker(5.05, 6)], limits) is None


@pytest.mark.parametrize(
    "stages",
    [
        pytest.param([StageObservation("thinker", serving=_snap(0.0, 0))], id="no graph"),
        pytest.param(
            [
                StageObservation(
                    "talker", serving=_snap(0.0, 0), downstream=(_peer("code2wav", 0.0, 9),)
                ),
                StageObservation("code2wav", serving=_snap(0.0, 9), upstream=("talker",)),
            ],
            id="the queued stage shares the GPU",
        ),
    ],
)
def test_a_gpu_without_a_queued_stage_elsewhere_is_never_capped(
    limits: DeviceLimits, stages: list[StageObservation]
) -> None:
    gov = PipelineGovernor(P)
    for i in range(400):
        now_s = i * 0.05
        moved = [
            replace(o, serving=_snap(now_s, o.serving.waiting if o.serving else 0)) for o in stages
        ]
        assert gov.update(now_s, moved, limits) is None


def test_a_gpu_that_starts_to_queue_itself_loses_its_cap(limits: DeviceLimits) -> None:
    gov = PipelineGovernor(P)
    _feed(gov, limits, 6, 0.0, 5.0)
    assert gov.update(5.0, [thinker(5.0, 6, own_waiting=3)], limits) is None
    assert "own stages" in gov.message


def test_a_stale_downstream_scrape_lifts_the_cap(limits: DeviceLimits) -> None:
    gov = PipelineGovernor(P)
    _feed(gov, limits, 6, 0.0, 5.0)
    old = StageObservation(
        "thinker",
        serving=_snap(11.0, 0),
        downstream=(DownstreamStage("talker", serving=_snap(5.0, 6), max_age_s=5.0),),
    )
    assert gov.update(11.0, [old], limits) is None


def test_a_fresh_hint_speaks_for_the_downstream_queue_before_the_scrape() -> None:
    hinted = DownstreamStage(
        "talker", serving=_snap(1.0, 0), hint=StageHint(received_s=1.0, waiting=7), max_age_s=5.0
    )
    view = queue_view(1.5, [StageObservation("thinker", downstream=(hinted,))])
    assert (view.downstream_waiting, view.bottleneck) == (7, "talker")
    # Once the hint is stale, the scrape speaks again.
    assert (
        queue_view(4.5, [StageObservation("thinker", downstream=(hinted,))]).downstream_waiting == 0
    )


@pytest.mark.parametrize(
    ("decision", "capped"),
    [
        (Decision(None, Reason.DEFAULT, "PMU"), True),
        (Decision(1800, Reason.RIDGE, "ridge"), True),
        (Decision(1000, Reason.RIDGE, "ridge below the cap"), False),
        (Decision(None, Reason.COMPUTE, "prefill: boost"), False),
        (Decision(345, Reason.STALL, "stall"), False),
    ],
)
def test_the_cap_lowers_busy_phases_but_leaves_prefill_and_stalls(
    decision: Decision, capped: bool
) -> None:
    out = _pipeline_capped(decision, 1200, "capped")
    assert (out.reason is Reason.PIPELINE) is capped
    assert out.target_sm_clock_mhz == (1200 if capped else decision.target_sm_clock_mhz)


STAGES = ("thinker", "talker", "code2wav", "encoder", "vocoder")


@st.composite
def _ticks(draw: st.DrawFn) -> list[tuple[float, list[StageObservation]]]:
    """A GPU's stages, their downstream graph and queue series over random tick times."""
    here = draw(st.lists(st.sampled_from(STAGES), min_size=0, max_size=3, unique=True))
    edges = {s: draw(st.lists(st.sampled_from(STAGES), max_size=3, unique=True)) for s in here}
    now_s = 0.0
    out = []
    for _ in range(draw(st.integers(1, 30))):
        now_s += draw(st.floats(0.0, 3.0))
        waiting = st.one_of(st.none(), st.integers(0, 40))
        obs = []
        for s in here:
            own = draw(waiting)
            down = tuple(
                DownstreamStage(
                    d,
                    serving=None
                    if (w := draw(waiting)) is None
                    else _snap(now_s - draw(st.floats(0, 8)), w),
                    hint=draw(
                        st.one_of(
                            st.none(),
                            st.builds(
                                StageHint,
                                received_s=st.floats(now_s - 6, now_s),
                                waiting=st.one_of(st.none(), st.integers(0, 40)),
                            ),
                        )
                    ),
                    max_age_s=5.0,
                )
                for d in edges[s]
            )
            serving = None if own is None else _snap(now_s, own)
            obs.append(StageObservation(s, serving=serving, max_age_s=5.0, downstream=down))
        out.append((now_s, obs))
    return out


@FUZZ
@given(
    ticks=_ticks(),
    queued=st.integers(1, 8),
    sustain_s=st.floats(0.0, 5.0),
    min_fraction=st.floats(0.1, 1.0),
    guard=st.lists(st.booleans(), min_size=30, max_size=30),
)
def test_any_graph_and_queue_series_never_raises_never_caps_below_the_floor_nor_without_a_queue(
    limits: DeviceLimits,
    ticks: list[tuple[float, list[StageObservation]]],
    queued: int,
    sustain_s: float,
    min_fraction: float,
    guard: list[bool],
) -> None:
    settings = replace(
        P,
        pipeline_queued_requests=queued,
        pipeline_sustain_s=sustain_s,
        pipeline_min_fraction=min_fraction,
    )
    gov = PipelineGovernor(settings)
    floor = limits.snap_up(
        max(min_fraction, settings.ridge_floor_fraction) * limits.default_max_mhz
    )
    for (now_s, stages), guard_active in zip(ticks, guard, strict=False):
        ceiling = gov.update(now_s, stages, limits, guard_active)
        if ceiling is None:
            continue
        assert not guard_active
        assert floor <= ceiling <= limits.default_max_mhz
        here = {o.stage for o in stages}
        queues = [
            w
            for o in stages
            for d in o.downstream
            if d.stage not in here and (w := d.waiting(now_s)) is not None
        ]
        assert queues and max(queues) >= gov.drained_below
        assert all((o.waiting(now_s) or 0) < queued for o in stages)


def test_a_queue_on_this_gpu_is_the_bottleneck_and_lifts_the_ridge() -> None:
    """The other half of P: the GPU hosting a queued stage must not trade its rate."""
    queued = queue_view(1.0, [thinker(1.0, talker_waiting=0, own_waiting=3)])
    why = protect(queued)
    assert why is not None and "thinker" in why and "3 requests queued" in why
    assert protect(queue_view(1.0, [thinker(1.0, talker_waiting=5, own_waiting=0)])) is None
    # A protected decision (boost) is not capped again by a downstream queue.
    protected = Decision(None, Reason.PIPELINE, why)
    assert _pipeline_capped(protected, 1200, "capped") is protected


def test_an_override_restarts_the_ridge_searchs_open_window(limits: DeviceLimits) -> None:
    """A trial window that P ran at boost would judge a clock it never measured."""
    search = RidgeSearch(0.5)
    key = (("talker", "decode"),)
    stage = DecodeStage()
    env = limits
    now = 0.0
    while search.keys.get(key) is None or search.keys[key].mode is not Mode.TRIAL:
        search.clock(now, key, [stage.observe(now, 0.02)], env)
        now += 0.25
    state = search.keys[key]
    opened_s = state.window_start_s
    for _ in range(2):  # the first scrape of a window only marks its start
        search.clock(now, key, [stage.observe(now, 0.02)], env)
        now += 0.25
    assert state.trial.count > 0
    search.interrupt(now)
    assert state.trial.count == 0 and state.window_start_s > opened_s


def test_the_strategy_runs_a_queued_stage_at_boost_instead_of_its_ridge(
    limits: DeviceLimits,
) -> None:
    """A decode the profile would lock at its ridge runs at boost while its queue stands,
    and goes back to the ridge when the queue is gone, with P or without it (a queued
    request waits out the whole batch ahead of it, so the tail pays a slow step many
    times); in SLO-target mode the targets decide instead. The queue
    comes from the engine's hints, as it does between scrapes (a scraped queue already reads
    as prefill to come, which runs at boost anyway)."""
    ridge = (("talker", "decode", 1200),)
    base = ControlSettings(
        intensity_source=IntensitySource.PROFILE, ridge_profile=ridge, first_token_floor=False
    )
    sample = Simulation(load_scenario("reference")).backend.sample(1)
    busy = StageSignals(True, False, False, False, 0.0, 4)

    def decide(
        strategy: TriServeStrategy, stage: DecodeStage, now_s: float, waiting: int
    ) -> Decision:
        obs = stage.observe(now_s, 0.02)
        hint = StageHint(now_s, busy=True, phase="decode", waiting=waiting, running=4)
        obs = replace(obs, hint=hint)
        return strategy.decide(TickContext(now_s, 0.25, sample, [obs], busy, limits))

    with_p = TriServeStrategy(replace(base, pipeline_enabled=True))
    without = TriServeStrategy(base)
    stages = DecodeStage(), DecodeStage()
    for i in range(4):  # phase detection needs two scrapes
        decide(with_p, stages[0], i * 0.25, 0)
        decide(without, stages[1], i * 0.25, 0)
    assert decide(with_p, stages[0], 1.0, 0).reason is Reason.RIDGE
    queued = decide(with_p, stages[0], 1.25, 3)
    assert queued.reason is Reason.PIPELINE and queued.target_sm_clock_mhz is None
    assert "talker: 3 requests queued" in queued.message
    lifted = decide(without, stages[1], 1.25, 3)
    assert lifted.reason is Reason.PIPELINE and lifted.target_sm_clock_mhz is None
    assert decide(with_p, stages[0], 1.5, 0).reason is Reason.RIDGE
    assert decide(without, stages[1], 1.5, 0).reason is Reason.RIDGE
