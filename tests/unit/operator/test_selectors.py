"""The shared label-selector function matches Kubernetes semantics."""

from __future__ import annotations

from typing import Any

import pytest

from triserve.api.models import LabelSelector
from triserve.api.selectors import describe, matches, selector_from_k8s


@pytest.mark.parametrize(
    ("raw", "labels", "expected"),
    [
        ({}, {}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]},
            {"a": "2"},
            True,
        ),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        (
            {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]},
            {"a": "1"},
            False,
        ),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": ""}, False),
        (
            {"matchLabels": {"z": "1"}, "matchExpressions": [{"key": "a", "operator": "Exists"}]},
            {"a": "x"},
            False,
        ),
    ],
)
def test_selector_matches_like_kubernetes(
    raw: dict[str, Any], labels: dict[str, str], expected: bool
) -> None:
    assert matches(selector_from_k8s(raw), labels) is expected


def test_describe_reads_like_kubectl() -> None:
    selector = selector_from_k8s(
        {
            "matchLabels": {"gpu": "h100"},
            "matchExpressions": [
                {"key": "zone", "operator": "In", "values": ["a", "b"]},
                {"key": "spot", "operator": "DoesNotExist"},
            ],
        }
    )
    assert describe(selector) == "gpu=h100,zone in (a,b),!spot"
    assert describe(LabelSelector()) == "<all>"
