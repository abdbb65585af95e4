"""The power budget's re-balance: from the kopf caches to caps written on the Nodes.

`handlers.py` runs `Budgeter.rebalance` on a kopf timer per policy (every
`OperatorSettings.budget_interval_s`); the status timer reads `Budgeter.status` into
`EnergyPolicy.status.powerBudget`. `fleet_inputs` (pure) turns the cached Nodes and
NodeEnergyReports into what `budget.allocate` reads:

* a node labelled for the policy with a fresh report: its governed GPUs, with their caps as
  the node's `triserve.io/power-caps` annotation shows them;
* a labelled node whose report is stale, or names another policy, but whose annotation still
  holds this policy's caps: those caps are *held*, counted against the budget unchanged; so
  is the cap of a GPU a fresh report no longer lists as governed;
* a labelled node with neither: its agent holds each GPU at the minimum limit until a cap
  arrives, so its GPU count times the largest minimum limit in the fleet is *reserved*.

Caps are written as the node's annotation, only where they changed; a node that leaves the
policy, and every node of a policy whose budget is removed, has the annotation removed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from triserve.api.powercaps import (
    POWER_CAPS_ANNOTATION,
    PowerCaps,
    PowerCapsError,
    format_power_caps,
    parse_power_caps,
)
from triserve.api.status import PowerBudgetStatus
from triserve.operator import budget
from triserve.operator.aggregation import ReportView
from triserve.operator.placement import NodeView, PolicyView

#: Per-GPU reservation for an unreported node when no GPU in the fleet has reported yet
#: (the H100's and A100's minimum power limit).
FALLBACK_RESERVE_W = 200.0


class Kube(Protocol):
    """What the budgeter needs from a Kubernetes client (`kube.KubeClient`)."""

    async def patch_node(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch one node."""


@dataclasses.dataclass(frozen=True, slots=True)
class FleetInputs:
    """What one re-balance of a policy reads (see the module docstring)."""

    gpus: tuple[budget.GpuInput, ...]
    written: Mapping[budget.GpuKey, int]
    held: Mapping[budget.GpuKey, int]
    reserved_w: float
    measured_w: float


def written_caps(node: NodeView, policy: str) -> dict[str, int]:
    """The caps the node's annotation holds for `policy` (empty: none, or unreadable)."""
    if node.power_caps is None:
        return {}
    try:
        caps = parse_power_caps(node.power_caps)
    except PowerCapsError:
        return {}
    return dict(caps.watts) if caps.policy == policy else {}


def fleet_inputs(
    policy: str,
    nodes: Iterable[NodeView],
    reports: Mapping[str, ReportView],
    *,
    now_s: float,
    stale_after_s: float,
    sent: Mapping[str, Mapping[str, int]] | None = None,
) -> FleetInputs:
    """The allocation's inputs from the nodes labelled for `policy` and their reports.

    `sent` holds caps written but not yet seen in the cache: a GPU counts at the higher of
    the two, so a raise in flight is never mistaken for watts still free.
    """
    sent = sent or {}
    gpus: list[budget.GpuInput] = []
    written: dict[budget.GpuKey, int] = {}
    held: dict[budget.GpuKey, int] = {}
    unreported_gpus = 0
    measured_w = 0.0
    for node in nodes:
        caps = written_caps(node, policy)
        for uuid, watts in sent.get(node.name, {}).items():
            caps[uuid] = max(caps.get(uuid, 0), watts)
        report = reports.get(node.name)
        fresh = (
            report is not None
            and report.policy == policy
            and now_s - report.reported_at_s <= stale_after_s
        )
        if report is not None and fresh:
            measured_w += report.gpu_watts
            for gpu in report.budget_gpus:
                gpus.append(gpu)
                if gpu.uuid in caps:
                    written[gpu.key] = caps.pop(gpu.uuid)
            # A capped GPU the report no longer lists as governed (an agent stopping reports
            # its GPUs released first) may still run at its cap: it stays counted.
            held.update({(node.name, uuid): watts for uuid, watts in caps.items()})
        elif caps:
            held.update({(node.name, uuid): watts for uuid, watts in caps.items()})
        else:
            unreported_gpus += node.gpus
    per_gpu_w = max((g.min_w for g in gpus), default=FALLBACK_RESERVE_W)
    return FleetInputs(tuple(gpus), written, held, unreported_gpus * per_gpu_w, measured_w)


def budget_status(
    watts: float, result: budget.Allocation, inputs: FleetInputs
) -> PowerBudgetStatus:
    """The policy's `status.powerBudget` after a re-balance."""
    binding = sum(1 for g in inputs.gpus if g.windows and g.windows[-1].bound)
    return PowerBudgetStatus(
        budget_watts=watts,
        usable_watts=round(result.usable_w, 1),
        allocated_watts=round(result.allocated_w, 1),
        measured_watts=round(inputs.measured_w, 1),
        headroom_watts=round(watts - inputs.measured_w, 1),
        capped_gpus=len(result.caps_w),
        binding_gpus=binding,
        held_watts=round(result.held_w, 1),
    )


def _caps_patch(text: str | None) -> dict[str, Any]:
    return {"metadata": {"annotations": {POWER_CAPS_ANNOTATION: text}}}


class Budgeter:
    """Re-balances each budgeted policy and writes the caps; one per operator."""

    def __init__(self, kube: Kube, settle_s: float) -> None:
        """`settle_s`: how long a lowered cap still counts at its old value (`BudgetKeeper`)."""
        self.kube = kube
        self.settle_s = settle_s
        self._keepers: dict[str, budget.BudgetKeeper] = {}
        self._status: dict[str, PowerBudgetStatus] = {}
        self._shortfall: dict[str, float] = {}
        #: node → (annotation text written, its caps) until the cache shows that text
        self._sent: dict[str, tuple[str | None, dict[str, int]]] = {}
        self.writes = 0  #: annotation patches sent (the bench and tests read it)

    def status(self, policy: str) -> PowerBudgetStatus | None:
        """The policy's last `status.powerBudget` (None: no budget, or not re-balanced yet)."""
        return self._status.get(policy)

    def shortfall_w(self, policy: str) -> float:
        """Watts by which the GPUs' minimum limits exceeded the usable budget last pass."""
        return self._shortfall.get(policy, 0.0)

    async def rebalance(
        self,
        policy: PolicyView,
        nodes: Iterable[NodeView],
        labels: Mapping[str, str | None],
        reports: Mapping[str, ReportView],
        *,
        now_s: float,
        stale_after_s: float,
        logger: logging.Logger | logging.LoggerAdapter[Any],
    ) -> None:
        """One re-balance of `policy`: allocate, then write the caps that changed."""
        nodes = list(nodes)
        spec = policy.spec.power_budget if policy.spec is not None else None
        mine = [n for n in nodes if labels.get(n.name) == policy.name]
        if spec is None or policy.deleting:
            self._keepers.pop(policy.name, None)
            self._status.pop(policy.name, None)
            mine = []
        # A node that left the policy (or a policy that dropped its budget) loses its caps.
        keep = {n.name for n in mine}
        for node in nodes:
            if node.name in self._sent and self._sent[node.name][0] == node.power_caps:
                del self._sent[node.name]
        for node in nodes:
            if node.name not in keep and written_caps(node, policy.name):
                await self._write(node.name, None, logger)
        if spec is None or policy.deleting:
            return
        inputs = fleet_inputs(
            policy.name,
            mine,
            reports,
            now_s=now_s,
            stale_after_s=stale_after_s,
            sent={node: caps for node, (_, caps) in self._sent.items()},
        )
        keeper = self._keepers.setdefault(policy.name, budget.BudgetKeeper(self.settle_s))
        result = keeper.rebalance(
            spec.usable_w,
            inputs.gpus,
            inputs.written,
            held=inputs.held,
            reserved_w=inputs.reserved_w,
            now_s=now_s,
        )
        keeper.forget(result.caps_w)
        grouped = result.by_node()
        for node in mine:
            caps = grouped.get(node.name)
            if not caps:
                continue
            text = format_power_caps(PowerCaps(policy=policy.name, watts=caps))
            if text != node.power_caps and self._sent.get(node.name, (None,))[0] != text:
                await self._write(node.name, text, logger, caps)
        self._status[policy.name] = budget_status(spec.watts, result, inputs)
        self._shortfall[policy.name] = result.shortfall_w

    async def clear(
        self,
        policy: str,
        nodes: Iterable[NodeView],
        logger: logging.Logger | logging.LoggerAdapter[Any],
    ) -> None:
        """Remove `policy`'s caps from every node (the policy is being deleted)."""
        self._keepers.pop(policy, None)
        self._status.pop(policy, None)
        for node in nodes:
            if written_caps(node, policy):
                await self._write(node.name, None, logger)

    async def _write(
        self,
        node: str,
        text: str | None,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        caps: Mapping[str, int] | None = None,
    ) -> None:
        try:
            await self.kube.patch_node(node, _caps_patch(text))
            self.writes += 1
            before = self._sent.get(node, (None, {}))[1]
            merged = {u: max(w, before.get(u, 0)) for u, w in (caps or {}).items()}
            self._sent[node] = (text, merged)
        except Exception as exc:  # a vanished node or a flaky API: the next pass retries
            logger.warning(f"Could not write the power caps of node {node}: {exc}")
