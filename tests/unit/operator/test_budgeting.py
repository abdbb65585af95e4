"""The budget re-balance writes caps on the Nodes, keeps a silent node's caps, cleans up."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from triserve.api.annotations import POLICY_LABEL
from triserve.api.models import EnergyPolicySpec
from triserve.api.powercaps import POWER_CAPS_ANNOTATION, PowerCaps, format_power_caps
from triserve.api.status import ReportPhase
from triserve.operator.aggregation import ReportView
from triserve.operator.budget import GpuInput, Window
from triserve.operator.budgeting import Budgeter
from triserve.operator.placement import NodeView, PolicyView

NOW_S = 1_000_000.0
LOG = logging.getLogger("test")


class FakeKube:
    def __init__(self) -> None:
        self.annotations: dict[str, str | None] = {}

    async def patch_node(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.annotations[name] = patch["metadata"]["annotations"][POWER_CAPS_ANNOTATION]
        return {}


def _policy(watts: int | None = 1500) -> PolicyView:
    spec = {"powerBudget": {"watts": watts, "marginPercent": 0}} if watts else {}
    return PolicyView(
        "fleet", "uid", 0, "2026-01-01T00:00:00Z", 1, EnergyPolicySpec.model_validate(spec)
    )


def _node(name: str, caps: dict[str, int] | None = None) -> NodeView:
    text = format_power_caps(PowerCaps("fleet", caps)) if caps is not None else None
    return NodeView(name, {POLICY_LABEL: "fleet"}, gpus=2, power_caps=text)


def _report(node: str, age_s: float = 0.0) -> ReportView:
    gpus = tuple(
        GpuInput(node, f"GPU-{node}-{i}", 200, 700, (Window(650, 3000, 700, 0.5),))
        for i in range(2)
    )
    return ReportView(
        node, "fleet", 1, ReportPhase.MANAGING, NOW_S - age_s, gpu_watts=1300, budget_gpus=gpus
    )


def _rebalance(
    budgeter: Budgeter, policy: PolicyView, nodes: list[NodeView], reports: dict[str, ReportView]
) -> None:
    labels = {n.name: n.policy for n in nodes}
    asyncio.run(
        budgeter.rebalance(
            policy, nodes, labels, reports, now_s=NOW_S, stale_after_s=90, logger=LOG
        )
    )


def test_caps_are_written_on_each_node_and_fit_the_budget() -> None:
    kube = FakeKube()
    budgeter = Budgeter(kube, settle_s=5)
    _rebalance(
        budgeter, _policy(), [_node("a"), _node("b")], {"a": _report("a"), "b": _report("b")}
    )
    total = 0
    for node in ("a", "b"):
        text = kube.annotations[node]
        assert text is not None and '"policy":"fleet"' in text
        total += sum(json.loads(text)["watts"].values())
    assert total <= 1500
    status = budgeter.status("fleet")
    assert status is not None and status.measured_watts == 2600 and status.binding_gpus == 4
    assert status.headroom_watts == 1500 - 2600


def test_a_node_that_stops_reporting_keeps_its_caps_counted() -> None:
    kube = FakeKube()
    budgeter = Budgeter(kube, settle_s=5)
    silent = _node("b", {"GPU-b-0": 600, "GPU-b-1": 600})
    nodes, reports = [_node("a"), silent], {"a": _report("a"), "b": _report("b", 600)}
    _rebalance(budgeter, _policy(2000), nodes, reports)
    assert "b" not in kube.annotations  # its caps stay as written
    status = budgeter.status("fleet")
    assert status is not None and status.held_watts == 1200
    assert status.allocated_watts == 2000
    text = kube.annotations["a"]
    assert text is not None and sum(json.loads(text)["watts"].values()) == 800


def test_caps_are_removed_when_the_budget_goes_or_the_node_leaves() -> None:
    kube = FakeKube()
    budgeter = Budgeter(kube, settle_s=5)
    capped = _node("a", {"GPU-a-0": 300})
    left = NodeView("b", {}, gpus=2, power_caps=format_power_caps(PowerCaps("fleet", {"x": 300})))
    _rebalance(budgeter, _policy(), [capped, left], {"a": _report("a")})
    assert kube.annotations["b"] is None
    _rebalance(budgeter, _policy(None), [capped], {"a": _report("a")})
    assert kube.annotations["a"] is None
    assert budgeter.status("fleet") is None


def test_a_capped_gpu_its_report_no_longer_governs_keeps_its_cap_counted() -> None:
    kube = FakeKube()
    budgeter = Budgeter(kube, settle_s=5)
    stopping = _node("b", {"GPU-b-0": 600, "GPU-b-1": 600})
    released = ReportView("b", "fleet", 1, ReportPhase.RELEASED, NOW_S)  # no governed GPUs
    _rebalance(budgeter, _policy(2000), [_node("a"), stopping], {"a": _report("a"), "b": released})
    status = budgeter.status("fleet")
    assert status is not None and status.held_watts == 1200 and status.allocated_watts <= 2000
