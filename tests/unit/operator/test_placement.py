"""Placement rules: GPU nodes only, priority then age then name, invalid/deleting claim nothing."""

from __future__ import annotations

from typing import Any

from triserve.operator.placement import (
    LabelChange,
    label_changes,
    label_patch,
    node_view,
    plan,
    policy_view,
    summarize,
)


def node(name: str, labels: dict[str, str] | None = None, gpus: int = 8) -> Any:
    status = {"capacity": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    return node_view({"metadata": {"name": name, "labels": labels or {}}, "status": status})


def policy(
    name: str, spec: dict[str, Any], created: str = "2025-01-01T00:00:00Z", **meta: Any
) -> Any:
    return policy_view(
        {
            "metadata": {"name": name, "creationTimestamp": created, "generation": 1, **meta},
            "spec": spec,
        }
    )


def test_only_gpu_nodes_are_placed() -> None:
    nodes = [
        node("gpu"),
        node("cpu", gpus=0),
        node("labelled", {"nvidia.com/gpu.present": "true"}, gpus=0),
    ]
    result = plan(nodes, [policy("p", {})])
    assert result.desired == {"cpu": None, "gpu": "p", "labelled": "p"}


def test_higher_priority_then_older_then_name_wins() -> None:
    nodes = [node("n")]
    assert (
        plan(nodes, [policy("a", {"priority": 1}), policy("b", {"priority": 2})]).desired["n"]
        == "b"
    )
    older = policy("z", {}, created="2024-01-01T00:00:00Z")
    assert plan(nodes, [policy("a", {}), older]).desired["n"] == "z"
    assert plan(nodes, [policy("b", {}), policy("a", {})]).desired["n"] == "a"


def test_loser_records_which_policy_holds_its_nodes() -> None:
    result = plan([node("n1"), node("n2")], [policy("hi", {"priority": 9}), policy("lo", {})])
    assert result.claims == {"hi": ["n1", "n2"], "lo": []}
    assert result.lost["lo"] == {"hi": ["n1", "n2"]}
    assert result.matching["lo"] == ["n1", "n2"]


def test_invalid_and_deleting_policies_claim_nothing() -> None:
    bad = policy("bad", {"clockLimits": {"minMHz": 2000, "maxMHz": 1000}})
    assert bad.spec is None and bad.spec_error and bad.spec_error.startswith("spec.clockLimits")
    gone = policy("gone", {}, deletionTimestamp="2025-01-02T00:00:00Z")
    assert plan([node("n")], [bad, gone]).desired == {"n": None}


def test_label_changes_skip_correct_and_in_flight_labels() -> None:
    nodes = [
        node("a", {"triserve.io/policy": "p"}),
        node("b"),
        node("c", {"triserve.io/policy": "old"}),
    ]
    result = plan(
        nodes,
        [
            policy(
                "p",
                {"nodeSelector": {"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}},
            )
        ],
    )
    assert label_changes(nodes, result) == [
        LabelChange("b", None, "p"),
        LabelChange("c", "old", "p"),
    ]
    assert label_changes(nodes, result, {"b": "p", "c": "p"}) == []


def test_label_patch_removes_with_null() -> None:
    assert label_patch(None) == {"metadata": {"labels": {"triserve.io/policy": None}}}


def test_summarize_bounds_long_lists() -> None:
    assert summarize(["a", "b", "c"], 2) == "a, b (+1 more)"
    assert summarize(["a"], 2) == "a"
