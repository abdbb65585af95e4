"""Bundled scenarios load, validate with useful errors, and show D, A and T under the PMU."""

from __future__ import annotations

from pathlib import Path

import pytest

from triserve.sim import Scenario, ScenarioError, Simulation, load_scenario


@pytest.fixture(scope="module")
def reference_report() -> object:
    sim = Simulation(load_scenario("reference"), seed=0)
    sim.run_until(240.0)
    return sim.report()


@pytest.mark.parametrize(
    "name", ["reference", "reference-high", "bursty", "hot", "a100", "l40s", "trace"]
)
def test_bundled_scenarios_load_by_name(name: str) -> None:
    sc = load_scenario(name)
    assert isinstance(sc, Scenario)
    assert sc.name == name


def test_scenario_loads_from_a_path(tmp_path: Path) -> None:
    src = Path(load_scenario("reference").source_path or "")
    dst = tmp_path / "mine.yaml"
    dst.write_text(src.read_text())
    assert load_scenario(dst).pipeline.stages[0].name == "thinker"


def test_invalid_scenario_error_names_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = Path(load_scenario("reference").source_path or "").read_text()
    bad.write_text(text.replace("rate_rps: 0.15", "rate_rps: -1"))
    with pytest.raises(ScenarioError) as err:
        load_scenario(bad)
    assert "bad.yaml" in str(err.value)
    assert "workload.rate_rps" in str(err.value)


def test_unknown_scenario_name_is_reported() -> None:
    with pytest.raises(ScenarioError, match="not found"):
        load_scenario("no-such-scenario")


def test_reference_shows_dependency_stalls_at_high_clock(reference_report: object) -> None:
    # D: the talker GPU idles waiting on the thinker while the PMU holds boost clocks.
    assert reference_report.stall_high_clock_s > 1.0  # type: ignore[attr-defined]


def test_reference_prefill_runs_slower_clock_than_decode(reference_report: object) -> None:
    # A: compute-bound prefill hits the power limit, memory-bound decode runs max clock.
    prefill = reference_report.mean_clock_mhz("prefill")  # type: ignore[attr-defined]
    decode = reference_report.mean_clock_mhz("decode")  # type: ignore[attr-defined]
    assert prefill is not None and decode is not None
    assert prefill < decode - 100


def test_reference_is_not_throttling(reference_report: object) -> None:
    assert reference_report.throttle_s == 0.0  # type: ignore[attr-defined]


def test_hot_scenario_throttles() -> None:
    # T: sustained high-A.I. prefill at a hot inlet reaches the slowdown threshold.
    sim = Simulation(load_scenario("hot"), seed=0)
    sim.run_until(240.0)
    assert sim.report().throttle_s > 5.0


def test_trace_replay_completes_every_request() -> None:
    rep = Simulation(load_scenario("trace"), seed=0).run()
    assert rep.arrived_requests == 300
    assert rep.completed_requests == 300 and rep.unfinished_requests == 0


@pytest.mark.parametrize("name", ["reference", "reference-high", "bursty", "hot", "a100", "l40s"])
def test_bundled_windows_expect_over_200_requests(name: str) -> None:
    # A p99 needs at least 200 completed requests in the measured window; a 15% margin
    # covers Poisson spread at the scenario's rate.
    sc = load_scenario(name)
    assert sc.workload.rate_rps * (sc.duration_s - sc.warmup_s) >= 230


def test_unfinished_requests_are_counted_not_dropped() -> None:
    sim = Simulation(load_scenario("reference"), seed=0)
    sim.run_until(200.0)
    rep = sim.report()
    assert rep.unfinished_requests > 0
    assert rep.arrived_requests == rep.completed_requests + rep.unfinished_requests
    assert rep.to_dict()["unfinished_share"] == pytest.approx(
        rep.unfinished_requests / rep.arrived_requests
    )
