"""Placement: which EnergyPolicy claims which GPU node, decided from cached objects alone.

Called by the kopf handlers (`handlers.py`) through `reconciler.Placer`, and by tests without
kopf. Everything here is pure: `node_view()`/`policy_view()` condense raw Kubernetes objects
into the few fields placement needs (these views are what the kopf indices store), and
`plan()` computes the one deterministic answer for the whole cluster:

* a node is a candidate when it has GPUs (`nvidia.com/gpu` capacity or allocatable > 0, or
  the label `nvidia.com/gpu.present=true`) and matches a policy's `spec.nodeSelector`;
* among the policies that match a node, the winner has the higher `spec.priority`, then the
  older `creationTimestamp`, then the smaller name;
* policies being deleted and policies whose spec is invalid claim nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from triserve.api.annotations import GPU_PRESENT_LABEL, GPU_RESOURCE, POLICY_LABEL
from triserve.api.models import EnergyPolicySpec, LabelSelector
from triserve.api.powercaps import POWER_CAPS_ANNOTATION
from triserve.api.selectors import matches


@dataclasses.dataclass(frozen=True, slots=True)
class NodeView:
    """The part of a Node that placement reads."""

    name: str
    labels: Mapping[str, str]
    gpus: int
    #: The `triserve.io/power-caps` annotation as the operator last wrote it (None: absent).
    power_caps: str | None = None

    @property
    def has_gpus(self) -> bool:
        """Whether the node offers GPUs (resource count or the GPU-present label)."""
        return self.gpus > 0 or self.labels.get(GPU_PRESENT_LABEL, "").lower() == "true"

    @property
    def policy(self) -> str | None:
        """The policy the node is labelled for now, if any."""
        return self.labels.get(POLICY_LABEL) or None


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyView:
    """The part of an EnergyPolicy that placement and status read."""

    name: str
    uid: str
    priority: int
    created: str
    generation: int
    spec: EnergyPolicySpec | None
    spec_error: str | None = None
    deleting: bool = False

    @property
    def selector(self) -> LabelSelector | None:
        """The node selector, or None when the spec is invalid."""
        return None if self.spec is None else self.spec.node_selector

    @property
    def claims_nodes(self) -> bool:
        """Whether the policy takes part in placement (valid and not being deleted)."""
        return self.spec is not None and not self.deleting

    @property
    def rank(self) -> tuple[int, str, str]:
        """Sort key: the first policy in ascending order wins an overlap."""
        return (-self.priority, self.created, self.name)

    def ref(self) -> dict[str, Any]:
        """A minimal object body kopf can post events against."""
        return {
            "apiVersion": "triserve.io/v1alpha1",
            "kind": "EnergyPolicy",
            "metadata": {"name": self.name, "uid": self.uid},
        }


def _quantity_count(value: object) -> int:
    """A GPU count from a resource quantity ("8", 8); anything unparsable counts as 0."""
    try:
        return max(0, int(str(value)))
    except (TypeError, ValueError):
        return 0


def node_view(body: Mapping[str, Any]) -> NodeView:
    """Condense a raw Node object (as kopf or the API returns it)."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    counts = [
        _quantity_count((status.get(part) or {}).get(GPU_RESOURCE, 0))
        for part in ("capacity", "allocatable")
    ]
    caps = (meta.get("annotations") or {}).get(POWER_CAPS_ANNOTATION)
    return NodeView(
        name=str(meta.get("name", "")),
        labels=dict(meta.get("labels") or {}),
        gpus=max(counts),
        power_caps=None if caps is None else str(caps),
    )


def format_validation_error(exc: ValidationError, prefix: str = "spec") -> str:
    """Render pydantic errors as `spec.field.path: what is wrong; …`, one per problem."""
    parts = []
    for error in exc.errors():
        path = ".".join([prefix, *(str(loc) for loc in error["loc"])])
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{path}: {message}")
    return "; ".join(parts)


def policy_view(body: Mapping[str, Any]) -> PolicyView:
    """Condense a raw EnergyPolicy object, validating its spec with the API models.

    An invalid spec does not raise: the view carries `spec=None` and a message that names
    each offending field, which the status turns into `Ready=False, reason InvalidSpec`.
    """
    meta = body.get("metadata") or {}
    raw_spec = body.get("spec") or {}
    spec: EnergyPolicySpec | None = None
    error: str | None = None
    try:
        spec = EnergyPolicySpec.model_validate(raw_spec)
    except ValidationError as exc:
        error = format_validation_error(exc)
    priority = raw_spec.get("priority", 0) if isinstance(raw_spec, Mapping) else 0
    return PolicyView(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        priority=spec.priority if spec is not None else _quantity_count(priority),
        created=str(meta.get("creationTimestamp") or ""),
        generation=int(meta.get("generation") or 0),
        spec=spec,
        spec_error=error,
        deleting=bool(meta.get("deletionTimestamp")),
    )


@dataclasses.dataclass(slots=True)
class Plan:
    """The cluster-wide placement.

    Attributes:
        desired: node name → the policy that should label it (None: no label) for every node.
        claims: policy name → nodes it wins, sorted.
        matching: policy name → GPU nodes its selector matches, sorted (won or lost).
        lost: policy name → {winning policy → nodes lost to it}.

    """

    desired: dict[str, str | None] = dataclasses.field(default_factory=dict)
    claims: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    matching: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    lost: dict[str, dict[str, list[str]]] = dataclasses.field(default_factory=dict)


def plan(nodes: Iterable[NodeView], policies: Iterable[PolicyView]) -> Plan:
    """Place every GPU node under at most one policy; see the module docstring for the rules."""
    ranked = sorted((p for p in policies if p.claims_nodes), key=lambda p: p.rank)
    result = Plan()
    for policy in ranked:
        result.claims[policy.name] = []
        result.matching[policy.name] = []
        result.lost[policy.name] = {}
    for node in sorted(nodes, key=lambda n: n.name):
        winner: str | None = None
        if node.has_gpus:
            for policy in ranked:
                selector = policy.selector
                if selector is None or not matches(selector, node.labels):
                    continue
                result.matching[policy.name].append(node.name)
                if winner is None:
                    winner = policy.name
                    result.claims[policy.name].append(node.name)
                else:
                    result.lost[policy.name].setdefault(winner, []).append(node.name)
        result.desired[node.name] = winner
    return result


@dataclasses.dataclass(frozen=True, slots=True)
class LabelChange:
    """One node whose policy label must change (`new=None` removes the label)."""

    node: str
    old: str | None
    new: str | None


def label_changes(
    nodes: Iterable[NodeView],
    placement: Plan,
    pending: Mapping[str, str | None] | None = None,
) -> list[LabelChange]:
    """The label writes that bring `nodes` to `placement`, sorted by node name.

    `pending` holds labels already written but not yet seen in the cache, so that a write in
    flight is not repeated.
    """
    pending = pending or {}
    changes = []
    for node in sorted(nodes, key=lambda n: n.name):
        current = pending.get(node.name, node.policy)
        desired = placement.desired.get(node.name)
        if current != desired:
            changes.append(LabelChange(node=node.name, old=current, new=desired))
    return changes


def label_patch(policy: str | None) -> dict[str, Any]:
    """The merge patch that sets (or, for None, removes) a node's policy label."""
    return {"metadata": {"labels": {POLICY_LABEL: policy}}}


def summarize(names: Sequence[str], limit: int) -> str:
    """`a, b, c (+7 more)`: a bounded list of names for events and messages."""
    shown = ", ".join(names[:limit])
    extra = len(names) - limit
    return f"{shown} (+{extra} more)" if extra > 0 else shown
