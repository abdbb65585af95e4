"""Nodes whose restore did not verify: named in the policy status and in release messages."""

from __future__ import annotations

from typing import Any

from triserve.api.status import ConditionStatus
from triserve.operator.aggregation import aggregate, parse_time_s, report_view
from triserve.operator.placement import node_view, plan, policy_view
from triserve.operator.policy_status import transitions, verdicts
from triserve.operator.reconciler import Placer
from triserve.operator.settings import OperatorSettings

NOW = "2025-01-01T00:01:00Z"
FAILED_GPU = {"index": 0, "uuid": "GPU-0", "state": "RestoreFailed", "message": "timeout"}


def report(node: str, phase: str, **status: Any) -> Any:
    body = {
        "metadata": {"name": node},
        "spec": {"nodeName": node},
        "status": {"policy": "p", "phase": phase, "lastReportTime": NOW, **status},
    }
    return report_view(body)


def test_status_names_nodes_whose_restore_failed_even_after_their_label_went() -> None:
    reports = {
        "n1": report("n1", "Managing"),
        "n2": report("n2", "RestoreFailed", gpus=[FAILED_GPU]),  # no longer labelled
    }
    agg = aggregate("p", 1, ["n1"], reports, now_s=parse_time_s(NOW), stale_after_s=90)
    assert agg.restore_failed_nodes == ["n2"] and agg.restore_failed_gpus == 1
    status = {"capacity": {"nvidia.com/gpu": "8"}}
    nodes = [node_view({"metadata": {"name": "n1"}, "status": status})]
    meta = {"name": "p", "creationTimestamp": "2025-01-01T00:00:00Z", "generation": 1}
    policy = policy_view({"metadata": meta, "spec": {}})
    found = {
        v.type: v for v in verdicts(policy, plan(nodes, [policy]), ["n1"], agg, stale_after_s=90)
    }
    degraded = found["Degraded"]
    assert degraded.status is ConditionStatus.TRUE and degraded.reason == "RestoreFailed"
    assert "n2" in degraded.message
    events = transitions([], list(found.values()))
    assert any(e.reason == "RestoreFailed" and e.warning for e in events)


def test_release_message_says_which_nodes_still_hold_locks() -> None:
    placer = Placer(OperatorSettings(), kube=None)  # type: ignore[arg-type]
    views = [report("n1", "RestoreFailed", gpus=[FAILED_GPU]), report("n2", "Released")]
    message = placer.release_message("p", [v for v in views if v], labelled=["n1", "n3"])
    assert message is not None
    assert "1 nodes still hold GPU locks" in message and "n1" in message
    assert "1 nodes have not reported phase Released: n3" in message
    assert placer.release_message("p", [v for v in views[1:] if v]) is None
