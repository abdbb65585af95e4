"""Conditions, status documents, minimal patches and the events worth posting."""

from __future__ import annotations

from typing import Any

from triserve.api.status import ConditionStatus
from triserve.operator.aggregation import Aggregate
from triserve.operator.placement import NodeView, PolicyView, node_view, plan, policy_view
from triserve.operator.policy_status import (
    Verdict,
    build_status,
    merge_patch,
    transitions,
    verdicts,
)


def _policy(name: str, spec: dict[str, Any], created: str = "2025-01-01T00:00:00Z") -> PolicyView:
    meta = {"name": name, "creationTimestamp": created, "generation": 3}
    return policy_view({"metadata": meta, "spec": spec})


def _nodes() -> list[NodeView]:
    status = {"capacity": {"nvidia.com/gpu": "8"}}
    return [node_view({"metadata": {"name": n}, "status": status}) for n in ("n1", "n2")]


def by_type(found: list[Verdict]) -> dict[str, Verdict]:
    return {v.type: v for v in found}


def test_everything_reporting_is_ready() -> None:
    policy = _policy("p", {})
    result = plan(_nodes(), [policy])
    agg = Aggregate(targeted=2, reporting=2, managed_gpus=16)
    found = by_type(verdicts(policy, result, ["n1", "n2"], agg, stale_after_s=90))
    assert found["Ready"].status is ConditionStatus.TRUE and found["Ready"].reason == "Reconciled"
    assert found["Progressing"].status is ConditionStatus.FALSE
    assert found["Conflicted"].reason == "NoConflict"


def test_the_loser_is_conflicted_and_not_ready() -> None:
    winner, loser = _policy("win", {"priority": 5}), _policy("lose", {})
    result = plan(_nodes(), [winner, loser])
    found = by_type(verdicts(loser, result, [], Aggregate(), stale_after_s=90))
    assert found["Conflicted"].reason == "LostToPolicy"
    assert "LostToPolicy win" in found["Conflicted"].message
    assert (found["Ready"].status, found["Ready"].reason) == (ConditionStatus.FALSE, "LostToPolicy")


def test_labels_not_yet_written_mean_placing() -> None:
    policy = _policy("p", {})
    found = by_type(
        verdicts(policy, plan(_nodes(), [policy]), ["n1"], Aggregate(targeted=1), stale_after_s=90)
    )
    assert found["Progressing"].reason == "Placing" and "n2" in found["Progressing"].message


def test_status_keeps_transition_time_and_patches_only_changes() -> None:
    policy = _policy("p", {})
    result = plan(_nodes(), [policy])
    agg = Aggregate(targeted=2, reporting=2, pods={"thinker": 2})
    found = verdicts(policy, result, ["n1", "n2"], agg, stale_after_s=90)
    first = build_status(policy, result, agg, found, {}, "2025-01-01T00:00:00Z")
    again = build_status(policy, result, agg, found, first, "2025-01-01T01:00:00Z")
    assert merge_patch(first, again) == {}
    assert first["observedGeneration"] == 3
    agg.pods = {}
    emptied = build_status(policy, result, agg, found, first, "2025-01-01T01:00:00Z")
    assert merge_patch(first, emptied) == {"pods": {"thinker": None}}


def test_transitions_warn_on_conflict_once() -> None:
    winner, loser = _policy("win", {"priority": 5}), _policy("lose", {})
    found = verdicts(loser, plan(_nodes(), [winner, loser]), [], Aggregate(), stale_after_s=90)
    notices = transitions([], found)
    assert [(n.reason, n.warning) for n in notices] == [("LostToPolicy", True)]
    stored = build_status(loser, plan(_nodes(), [winner, loser]), Aggregate(), found, {}, "t")
    assert transitions(stored["conditions"], found) == []
