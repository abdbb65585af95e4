"""Power budget allocation: the caps fit the budget and go where watts buy the most tokens."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from triserve.operator import budget
from triserve.operator.budget import BudgetKeeper, GpuInput, Window, allocate, fit


def _gpu(node: str, *windows: Window, min_w: float = 200, max_w: float = 700) -> GpuInput:
    return GpuInput(node=node, uuid=f"GPU-{node}", min_w=min_w, max_w=max_w, windows=windows)


def _bound(watts: float, tps: float) -> Window:
    return Window(watts=watts, tokens_per_second=tps, cap_watts=watts, capped_share=0.9)


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[GpuInput], dict[tuple[str, str], int], float]:
    """Reporting GPUs with random limits and windows, caps in force, and a usable budget."""
    count = draw(st.integers(1, 24))
    gpus, written = [], {}
    for i in range(count):
        min_w = draw(st.sampled_from([100.0, 150.0, 200.0]))
        max_w = min_w + draw(st.integers(50, 600))
        windows = tuple(
            Window(
                watts=draw(st.floats(min_w * 0.3, max_w)),
                tokens_per_second=draw(st.floats(0, 5000)),
                cap_watts=draw(st.sampled_from([0.0, min_w, max_w])),
                capped_share=draw(st.floats(0, 1)),
            )
            for _ in range(draw(st.integers(0, 4)))
        )
        gpu = GpuInput(f"n{i % 5}", f"GPU-{i}", min_w, max_w, windows)
        gpus.append(gpu)
        if draw(st.booleans()):
            written[gpu.key] = draw(st.integers(int(min_w), int(max_w)))
    floors = sum(g.min_w for g in gpus)
    usable = floors + draw(st.floats(0, sum(g.max_w - g.min_w for g in gpus) * 1.2))
    return gpus, written, usable


@settings(max_examples=200, deadline=None)
@given(fleets())
def test_caps_never_add_up_to_more_than_the_usable_budget(
    fleet: tuple[list[GpuInput], dict[tuple[str, str], int], float],
) -> None:
    gpus, written, usable = fleet
    result = allocate(usable, gpus, written)
    assert sum(result.caps_w.values()) <= usable + 1e-6
    for gpu in gpus:
        assert gpu.min_w <= result.caps_w[gpu.key] <= gpu.max_w


@settings(max_examples=200, deadline=None)
@given(fleets(), st.floats(0.3, 1.0))
def test_caps_in_force_stay_within_budget_while_a_lowered_budget_takes_effect(
    fleet: tuple[list[GpuInput], dict[tuple[str, str], int], float], factor: float
) -> None:
    """Old caps where agents may still be, new caps elsewhere: never more than the budget."""
    gpus, _, usable = fleet
    floors = sum(g.min_w for g in gpus)
    keeper = BudgetKeeper(settle_s=5.0)
    first = keeper.rebalance(usable, gpus, {}, now_s=0.0)
    lower = max(floors, usable * factor)
    second = keeper.rebalance(lower, gpus, dict(first.caps_w), now_s=1.0)
    # Lowered caps are written in the same pass.
    assert sum(second.caps_w.values()) <= lower + 1e-6
    # A GPU that has not applied its new cap yet draws up to its old one: the sum of the
    # larger of each GPU's old and new cap stays within the old budget, and once the lowered
    # caps settled, within the new one.
    in_force = sum(max(first.caps_w[k], second.caps_w[k]) for k in first.caps_w)
    assert in_force <= usable + 1e-6
    third = keeper.rebalance(lower, gpus, dict(second.caps_w), now_s=1.5)
    in_force = sum(max(second.caps_w[k], third.caps_w[k]) for k in second.caps_w)
    assert in_force <= max(lower, sum(second.caps_w.values())) + 1e-6


@settings(max_examples=100, deadline=None)
@given(fleets())
def test_a_node_that_stops_reporting_keeps_its_caps_counted(
    fleet: tuple[list[GpuInput], dict[tuple[str, str], int], float],
) -> None:
    gpus, written, usable = fleet
    held = {("gone", "GPU-a"): 400, ("gone", "GPU-b"): 350}
    result = allocate(usable + 750, gpus, written, held=held)
    assert result.caps_w[("gone", "GPU-a")] == 400
    assert result.held_w == 750
    assert sum(result.caps_w.values()) <= usable + 750 + 1e-6


def test_a_gpu_seen_for_the_first_time_gets_only_watts_no_measured_gpu_can_use() -> None:
    busy = _gpu("a", _bound(400, 3000))
    new = _gpu("b")
    result = allocate(900, [busy, new], {busy.key: 400})
    assert result.caps_w == {busy.key: 700, new.key: 200}


def test_watts_go_to_the_gpu_whose_extra_watts_buy_more_tokens() -> None:
    # Same limits; gpu a measured a steep curve (held at two caps), gpu b a flat one.
    steep = _gpu("a", _bound(300, 1000), _bound(400, 1300))
    flat = _gpu("b", _bound(300, 1000), _bound(400, 1020))
    result = allocate(900, [steep, flat], {steep.key: 400, flat.key: 400})
    assert result.caps_w[steep.key] > result.caps_w[flat.key]
    assert sum(result.caps_w.values()) <= 900


def test_a_gpu_that_does_not_use_its_cap_gives_watts_to_one_that_does() -> None:
    idle = _gpu("a", Window(watts=150, tokens_per_second=50, cap_watts=500, capped_share=0.0))
    busy = _gpu("b", _bound(300, 2000))
    result = allocate(900, [idle, busy], {idle.key: 500, busy.key: 300}, settling={})
    # The idle GPU is lowered at once; the busy one is raised once the watts are free.
    assert result.caps_w[idle.key] < 500
    keeper = BudgetKeeper(settle_s=5.0)
    first = keeper.rebalance(900, [idle, busy], {idle.key: 500, busy.key: 300}, now_s=0.0)
    later = keeper.rebalance(900, [idle, busy], dict(first.caps_w), now_s=10.0)
    assert later.caps_w[busy.key] > 300 + 100


def test_raises_wait_until_the_lowered_caps_settle() -> None:
    idle = _gpu("a", Window(watts=150, tokens_per_second=50, cap_watts=500, capped_share=0.0))
    busy = _gpu("b", _bound(300, 2000))
    keeper = BudgetKeeper(settle_s=5.0)
    first = keeper.rebalance(800, [idle, busy], {idle.key: 500, busy.key: 300}, now_s=0.0)
    assert first.caps_w[busy.key] == 300 and first.deferred_w > 0
    soon = keeper.rebalance(800, [idle, busy], dict(first.caps_w), now_s=2.0)
    assert soon.caps_w[busy.key] == 300
    settled = keeper.rebalance(800, [idle, busy], dict(soon.caps_w), now_s=6.0)
    assert settled.caps_w[busy.key] > 300


def test_budget_below_the_minimum_limits_reports_the_shortfall() -> None:
    gpus = [_gpu("a"), _gpu("b")]
    result = allocate(300, gpus, {})
    assert result.shortfall_w == pytest.approx(100)
    assert set(result.caps_w.values()) == {200}


def test_elasticity_is_measured_from_two_capped_windows() -> None:
    # Above the static power (half the 200 W minimum): 200 W then 400 W, twice the tokens.
    curve = fit(_gpu("a", _bound(300, 1000), _bound(500, 2000)))
    assert curve.e == pytest.approx(1.0)
    prior = fit(_gpu("a", _bound(300, 1000)))
    assert prior.e == budget.PRIOR_ELASTICITY


def test_a_fit_whose_slope_underflows_gets_the_floor_not_a_math_error() -> None:
    """Found by hypothesis: a window with 5e-324 tokens/s fits a subnormal slope."""
    from triserve.operator.budget import Curve

    curve = Curve(a=5e-324, e=0.05, demand_w=101.2, p0_w=50.0)
    assert curve.cap_at(1e-12, 100.0, 150.0) == 100.0
