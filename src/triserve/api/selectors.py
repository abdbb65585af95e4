"""Label-selector matching, shared by the operator (node placement) and the node agent.

Kubernetes evaluates `matchLabels` and `matchExpressions` on the server; triserve also needs
the same answer in memory: the operator decides which policy claims a node from its cached
labels, and the agent decides which of its pods a policy's `podSelector` covers. Both call
`matches()` here so the two can never disagree. Pure functions, no Kubernetes client.
"""

from __future__ import annotations

from collections.abc import Mapping

from triserve.api.models import LabelSelector, LabelSelectorRequirement, SelectorOperator


def requirement_matches(requirement: LabelSelectorRequirement, labels: Mapping[str, str]) -> bool:
    """Whether one `matchExpressions` entry holds for `labels` (Kubernetes semantics).

    `NotIn` holds when the key is absent, as in Kubernetes; `In` needs the key present.
    """
    present = requirement.key in labels
    match requirement.operator:
        case SelectorOperator.IN:
            return present and labels[requirement.key] in requirement.values
        case SelectorOperator.NOT_IN:
            return not present or labels[requirement.key] not in requirement.values
        case SelectorOperator.EXISTS:
            return present
        case SelectorOperator.DOES_NOT_EXIST:
            return not present
    return False  # pragma: no cover - exhaustive over the enum


def matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """Whether `labels` satisfy every `matchLabels` pair and every `matchExpressions` entry.

    An empty selector matches everything, as a Kubernetes `LabelSelector` does.
    """
    for key, value in selector.match_labels.items():
        if labels.get(key) != value:
            return False
    return all(requirement_matches(req, labels) for req in selector.match_expressions)


def is_empty(selector: LabelSelector) -> bool:
    """Whether the selector has no terms at all (and so selects every object)."""
    return not selector.match_labels and not selector.match_expressions


def describe(selector: LabelSelector) -> str:
    """A short, kubectl-like rendering of the selector for events and condition messages.

    Example: `nvidia.com/gpu.product=H100,zone in (a,b),!spot`.
    """
    if is_empty(selector):
        return "<all>"
    terms = [f"{key}={value}" for key, value in sorted(selector.match_labels.items())]
    for req in selector.match_expressions:
        values = ",".join(req.values)
        match req.operator:
            case SelectorOperator.IN:
                terms.append(f"{req.key} in ({values})")
            case SelectorOperator.NOT_IN:
                terms.append(f"{req.key} notin ({values})")
            case SelectorOperator.EXISTS:
                terms.append(req.key)
            case SelectorOperator.DOES_NOT_EXIST:
                terms.append(f"!{req.key}")
    return ",".join(terms)


def selector_from_k8s(raw: Mapping[str, object] | None) -> LabelSelector:
    """Parse a selector as it appears in a manifest (camelCase keys); None means empty.

    Raises pydantic's `ValidationError` when the selector is malformed.
    """
    return LabelSelector.model_validate(dict(raw or {}))
