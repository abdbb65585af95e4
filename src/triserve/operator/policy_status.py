"""Policy status: conditions, counts and the minimal patch for `EnergyPolicy.status`.

Called by the status timer in `handlers.py` (through `reconciler.Placer.status_update()`).
`build_status()` turns a policy's placement and report aggregate into the status document;
`merge_patch()` reduces it to the fields that differ from what is stored, so an unchanged
policy costs no API call; `transitions()` names the condition changes worth an event.

Conditions (type: reasons):

* Ready: Reconciled | InvalidSpec | NoMatchingNodes | LostToPolicy | Placing | AgentsNotReporting
* Progressing: Placing | WaitingForAgents | Reconciled | InvalidSpec
* Degraded: RestoreFailed | AgentsNotReporting | GpusDegraded | Reconciled | InvalidSpec
* Conflicted: LostToPolicy | NoConflict
* BudgetLimited (only while spec.powerBudget is set): BudgetBinding | OverBudget |
  BudgetBelowMinimum | WithinBudget — whether the budget, not the policy, holds GPUs down
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from triserve.api.annotations import GPU_PRESENT_LABEL, GPU_RESOURCE, POLICY_LABEL
from triserve.api.selectors import describe
from triserve.api.status import (
    Condition,
    ConditionStatus,
    EnergyPolicyStatus,
    GpuCounts,
    NodeCounts,
    PowerBudgetStatus,
)
from triserve.operator.aggregation import Aggregate
from triserve.operator.placement import Plan, PolicyView, summarize

CONDITION_TYPES = ("Ready", "Progressing", "Degraded", "Conflicted")
#: Status keys the operator owns; anything else under `status` (e.g. kopf's) is left alone.
OWNED_KEYS = frozenset(
    EnergyPolicyStatus.model_fields[f].alias or f for f in EnergyPolicyStatus.model_fields
)


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """One condition before timestamps: type, status, CamelCase reason, actionable message."""

    type: str
    status: ConditionStatus
    reason: str
    message: str


def _conflict(policy: PolicyView, placement: Plan, limit: int) -> Verdict:
    lost = placement.lost.get(policy.name, {})
    if not lost:
        return Verdict(
            "Conflicted", ConditionStatus.FALSE, "NoConflict", "No overlap with other policies."
        )
    held = "; ".join(
        f"{len(nodes)} held by policy {winner} ({summarize(nodes, limit)})"
        for winner, nodes in sorted(lost.items())
    )
    message = (
        f"LostToPolicy {', '.join(sorted(lost))}: of {len(placement.matching[policy.name])} "
        f"matching GPU nodes, {held}. The winner has a higher spec.priority, or the same "
        "priority and an older creationTimestamp; raise spec.priority or narrow "
        "spec.nodeSelector of one policy."
    )
    return Verdict("Conflicted", ConditionStatus.TRUE, "LostToPolicy", message)


def verdicts(
    policy: PolicyView,
    placement: Plan,
    labelled: Sequence[str],
    agg: Aggregate,
    *,
    stale_after_s: float,
    limit: int = 5,
    budget: PowerBudgetStatus | None = None,
    shortfall_w: float = 0.0,
) -> list[Verdict]:
    """The conditions for `policy`, given its placement, its nodes' reports and its budget."""
    true, false = ConditionStatus.TRUE, ConditionStatus.FALSE
    if policy.spec is None:
        message = f"{policy.spec_error}. Fix the spec; the policy claims no nodes until then."
        return [
            Verdict("Ready", false, "InvalidSpec", message),
            Verdict("Progressing", false, "InvalidSpec", "Waiting for a valid spec."),
            Verdict("Degraded", false, "InvalidSpec", "Nothing is placed."),
            Verdict("Conflicted", false, "NoConflict", "An invalid policy claims no nodes."),
        ]
    conflicted = _conflict(policy, placement, limit)
    claims = placement.claims.get(policy.name, [])
    to_place = sorted(set(claims) ^ set(labelled))
    waiting = sorted(set(agg.waiting) | set(agg.behind))
    if to_place:
        progressing = Verdict(
            "Progressing",
            true,
            "Placing",
            f"Updating the {POLICY_LABEL} label on {len(to_place)} nodes: "
            f"{summarize(to_place, limit)}.",
        )
    elif waiting:
        progressing = Verdict(
            "Progressing",
            true,
            "WaitingForAgents",
            f"{len(waiting)} of {len(labelled)} nodes have not yet reported generation "
            f"{policy.generation} of this policy: {summarize(waiting, limit)}.",
        )
    else:
        progressing = Verdict("Progressing", false, "Reconciled", "Placement is up to date.")

    if agg.restore_failed_nodes:
        degraded = Verdict(
            "Degraded",
            true,
            "RestoreFailed",
            f"{agg.restore_failed_gpus} GPUs may still hold clocks or a power limit set by this "
            f"policy: restoring them has not verified on nodes "
            f"{summarize(agg.restore_failed_nodes, limit)}. The agents keep retrying; "
            "kubectl get nodeenergyreports <node> -o yaml shows each GPU's message.",
        )
    elif agg.stale:
        degraded = Verdict(
            "Degraded",
            true,
            "AgentsNotReporting",
            f"{len(agg.stale)} nodes sent no report for {stale_after_s:.0f}s: "
            f"{summarize(agg.stale, limit)}. Check the triserve agent pod on each "
            "(kubectl get pods -A -o wide --field-selector spec.nodeName=<node>).",
        )
    elif agg.degraded_nodes or agg.degraded_gpus:
        degraded = Verdict(
            "Degraded",
            true,
            "GpusDegraded",
            f"{agg.degraded_gpus} GPUs left at default clocks after errors "
            f"(nodes: {summarize(agg.degraded_nodes, limit) or 'see NodeEnergyReports'}); "
            "kubectl get nodeenergyreports shows each GPU's message.",
        )
    else:
        degraded = Verdict("Degraded", false, "Reconciled", "All reporting GPUs are healthy.")

    if not placement.matching.get(policy.name):
        ready = Verdict(
            "Ready",
            false,
            "NoMatchingNodes",
            f"No GPU node matches spec.nodeSelector ({describe(policy.spec.node_selector)}). "
            f"A node counts if it has {GPU_RESOURCE} capacity or the label "
            f"{GPU_PRESENT_LABEL}=true; compare the selector with kubectl get nodes --show-labels.",
        )
    elif not claims:
        ready = Verdict("Ready", false, "LostToPolicy", conflicted.message)
    elif to_place:
        ready = Verdict("Ready", false, "Placing", progressing.message)
    elif agg.reporting < agg.targeted:
        missing = sorted(set(agg.waiting) | set(agg.stale))
        ready = Verdict(
            "Ready",
            false,
            "AgentsNotReporting",
            f"{len(missing)} of {agg.targeted} nodes have no recent report for this policy: "
            f"{summarize(missing, limit)}. Check that the triserve agent DaemonSet runs there.",
        )
    else:
        ready = Verdict(
            "Ready",
            true,
            "Reconciled",
            f"{agg.targeted} nodes and {agg.managed_gpus} GPUs under this policy; "
            "every agent is reporting.",
        )
    found = [ready, progressing, degraded, conflicted]
    if budget is not None and policy.spec.power_budget is not None:
        found.append(_budget_verdict(budget, shortfall_w))
    return found


def _budget_verdict(budget: PowerBudgetStatus, shortfall_w: float) -> Verdict:
    """Whether the power budget, rather than the policy, limits the GPUs."""
    true, false = ConditionStatus.TRUE, ConditionStatus.FALSE
    if shortfall_w > 0:
        return Verdict(
            "BudgetLimited",
            true,
            "BudgetBelowMinimum",
            f"The GPUs' minimum power limits exceed the usable budget by {shortfall_w:.0f} W: "
            "every GPU is held at its minimum limit. Raise spec.powerBudget.watts, lower "
            "spec.powerBudget.marginPercent, or select fewer nodes.",
        )
    if budget.measured_watts > budget.budget_watts:
        return Verdict(
            "BudgetLimited",
            true,
            "OverBudget",
            f"Measured power {budget.measured_watts:.0f} W is above the budget of "
            f"{budget.budget_watts:.0f} W; caps add up to {budget.allocated_watts:.0f} W. "
            "GPUs outside triserve's control on these nodes may be drawing power.",
        )
    if budget.binding_gpus:
        return Verdict(
            "BudgetLimited",
            true,
            "BudgetBinding",
            f"{budget.binding_gpus} of {budget.capped_gpus} GPUs spent the last report window "
            "held at their budget cap: the power budget, not the policy, limits them.",
        )
    return Verdict(
        "BudgetLimited",
        false,
        "WithinBudget",
        f"No GPU is held at its budget cap; {budget.allocated_watts:.0f} of "
        f"{budget.usable_watts:.0f} usable watts allocated.",
    )


def _conditions(
    found: Sequence[Verdict], previous: Sequence[Mapping[str, Any]], generation: int, now: str
) -> list[Condition]:
    """Conditions with `lastTransitionTime` kept unless the status value flipped."""
    before = {c.get("type"): c for c in previous if isinstance(c, Mapping)}
    out = []
    for verdict in found:
        old = before.get(verdict.type)
        since = now
        if old is not None and old.get("status") == verdict.status.value:
            since = str(old.get("lastTransitionTime") or now)
        out.append(
            Condition(
                type=verdict.type,
                status=verdict.status,
                reason=verdict.reason,
                message=verdict.message,
                observed_generation=generation,
                last_transition_time=since,
            )
        )
    return out


def build_status(
    policy: PolicyView,
    placement: Plan,
    agg: Aggregate,
    found: Sequence[Verdict],
    previous: Mapping[str, Any],
    now: str,
    *,
    budget: PowerBudgetStatus | None = None,
) -> dict[str, Any]:
    """The whole operator-owned status document, with Kubernetes field names."""
    status = EnergyPolicyStatus(
        observed_generation=policy.generation,
        conditions=_conditions(found, previous.get("conditions") or [], policy.generation, now),
        nodes=NodeCounts(
            targeted=agg.targeted,
            reporting=agg.reporting,
            conflicted=sum(len(n) for n in placement.lost.get(policy.name, {}).values()),
        ),
        gpus=GpuCounts(
            managed=agg.managed_gpus,
            degraded=agg.degraded_gpus,
            restore_failed=agg.restore_failed_gpus,
        ),
        pods=dict(sorted(agg.pods.items())),
        energy=agg.energy,
        efficiency=agg.efficiency,
        power_budget=budget if policy.spec and policy.spec.power_budget else None,
        slo=agg.slo,
    )
    return status.to_k8s()


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7396) that turns `old` into `new`; empty when equal.

    Keys of `old` missing from `new` become None (removal); lists are replaced whole.
    """
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if before == value:
            continue
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        else:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


def owned(status: Mapping[str, Any] | None) -> dict[str, Any]:
    """The operator-owned part of a stored status."""
    return {k: v for k, v in (status or {}).items() if k in OWNED_KEYS}


@dataclasses.dataclass(frozen=True, slots=True)
class Notice:
    """An event to post on the policy: `warning` selects kopf.warn over kopf.info."""

    reason: str
    message: str
    warning: bool


_WARN_WHEN_TRUE = {"Conflicted", "Degraded"}


def transitions(previous: Sequence[Mapping[str, Any]], found: Sequence[Verdict]) -> list[Notice]:
    """Events for condition changes a user should hear about (status or reason changed)."""
    before = {c.get("type"): c for c in previous if isinstance(c, Mapping)}
    notices = []
    for verdict in found:
        old = before.get(verdict.type)
        if (
            old
            and old.get("status") == verdict.status.value
            and old.get("reason") == verdict.reason
        ):
            continue
        is_true = verdict.status is ConditionStatus.TRUE
        if verdict.type in _WARN_WHEN_TRUE and is_true:
            notices.append(Notice(verdict.reason, verdict.message, warning=True))
        elif verdict.type == "Ready" and is_true:
            notices.append(Notice(verdict.reason, verdict.message, warning=False))
        elif verdict.type == "Ready" and verdict.reason in {"InvalidSpec", "NoMatchingNodes"}:
            notices.append(Notice(verdict.reason, verdict.message, warning=True))
    return notices
