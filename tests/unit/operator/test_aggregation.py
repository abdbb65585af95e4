"""Report aggregation: sums, means, tokens-weighted efficiency, freshness, release checks."""

from __future__ import annotations

from typing import Any

from triserve.api.status import ReportPhase
from triserve.operator.aggregation import aggregate, parse_time_s, pending_release, report_view

NOW = "2025-01-01T00:01:00Z"


def report(node: str, policy: str = "p", when: str = NOW, **status: Any) -> Any:
    body = {
        "metadata": {"name": node},
        "spec": {"nodeName": node},
        "status": {"policy": policy, "phase": "Managing", "lastReportTime": when, **status},
    }
    return report_view(body)


def test_fresh_reports_are_summed_and_stale_ones_named() -> None:
    reports = {
        "a": report(
            "a", energy={"joules": 100, "averageWatts": 10, "windowSeconds": 10}, managedGpus=8
        ),
        "b": report(
            "b", energy={"joules": 300, "averageWatts": 30, "windowSeconds": 20}, managedGpus=8
        ),
        "c": report("c", when="2025-01-01T00:00:00Z"),
        "d": report("d", policy="other"),
    }
    agg = aggregate(
        "p", 1, ["a", "b", "c", "d", "e"], reports, now_s=parse_time_s(NOW), stale_after_s=30
    )
    assert (agg.targeted, agg.reporting) == (5, 2)
    assert agg.stale == ["c"] and agg.waiting == ["d", "e"]
    assert agg.energy.joules == 400 and agg.energy.average_watts == 20
    assert agg.energy.window_seconds == 20
    assert agg.managed_gpus == 16


def test_efficiency_is_weighted_by_tokens() -> None:
    reports = {
        "a": report(
            "a", energy={"joules": 100}, efficiency={"tokens": 100, "baselineTokensPerJoule": 0.5}
        ),
        "b": report(
            "b", energy={"joules": 100}, efficiency={"tokens": 300, "baselineTokensPerJoule": 1.5}
        ),
    }
    agg = aggregate("p", 0, ["a", "b"], reports, now_s=parse_time_s(NOW), stale_after_s=30)
    assert agg.efficiency.tokens_per_joule == 2.0
    assert agg.efficiency.baseline_tokens_per_joule == 1.0  # 400 tokens / (200 + 200) J
    assert agg.efficiency.improvement_percent == 100.0


def test_invalid_reports_are_ignored() -> None:
    assert report_view({"metadata": {"name": "x"}}) is None
    assert report_view({"metadata": {"name": "x"}, "status": {"phase": "Bogus"}}) is None


def test_pending_release_lists_agents_still_holding_the_policy() -> None:
    views = [report("a"), report("b", phase=ReportPhase.RELEASED.value), report("c", policy="q")]
    assert pending_release("p", [v for v in views if v]) == ["a"]


def test_pending_release_waits_for_labelled_nodes_whose_agent_has_not_answered() -> None:
    views = [v for v in (report("a"), report("b", phase=ReportPhase.RELEASED.value)) if v]
    other = report("c", policy="q")
    assert other is not None
    # "d" was labelled but its first report has not arrived: its agent may hold locks.
    assert pending_release("p", views, labelled=["b", "d"]) == ["a", "d"]
    # "c" now reports another policy: its agent let go of "p".
    assert pending_release("p", [*views, other], labelled=["c"]) == ["a"]


def _slo(used: float, over: float, measured_s: float) -> dict[str, Any]:
    target = {
        "scope": "qwen3-omni/*",
        "metric": "e2e",
        "quantile": 0.99,
        "targetSeconds": 50.0,
        "measuredSeconds": measured_s,
        "headroomUsedPercent": used,
        "overTargetPercent": over,
        "observations": 40,
    }
    return {"headroomUsedPercent": used, "overTargetPercent": over, "targets": [target]}


def test_slo_targets_show_the_node_that_used_most_of_each() -> None:
    reports = {
        "a": report("a", slo=_slo(60.0, 0.0, 30.0)),
        "b": report("b", slo=_slo(96.0, 2.5, 48.0)),
        "c": report("c"),
    }
    agg = aggregate("p", 1, ["a", "b", "c"], reports, now_s=parse_time_s(NOW), stale_after_s=30)
    assert agg.slo is not None
    assert agg.slo.headroom_used_percent == 96.0 and agg.slo.over_target_percent == 2.5
    (target,) = agg.slo.targets
    assert target.measured_seconds == 48.0
    relative = aggregate("p", 1, ["c"], reports, now_s=parse_time_s(NOW), stale_after_s=30)
    assert relative.slo is None, "a Relative policy's status has no slo section"
