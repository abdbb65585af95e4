"""Policy defaults and the errors a user sees for a bad spec."""

from __future__ import annotations

import pytest

from triserve.api import PolicyError, PolicyMode, Strategy, parse_policy_spec
from triserve.api.annotations import (
    DYNAMO_ROLE_LABEL,
    KSERVE_COMPONENT_LABEL,
    LLM_D_ROLE_LABEL,
    stage_from_role,
)


def test_empty_spec_means_enforced_triserve_with_every_component_on() -> None:
    spec = parse_policy_spec({})
    assert spec.mode is PolicyMode.ENFORCE
    assert spec.strategy is Strategy.TRI_SERVE
    assert spec.tri_serve.dependency_stalls.enabled
    assert spec.tri_serve.arithmetic_intensity.enabled
    assert spec.tri_serve.thermal.enabled
    assert spec.control_interval_ms == 50
    assert spec.slo.max_latency_increase_percent == 1.0


def test_spec_round_trips_with_kubernetes_field_names() -> None:
    spec = parse_policy_spec({"clockLimits": {"minMHz": 600, "maxMHz": 1500}})
    dumped = spec.to_k8s()
    assert dumped["clockLimits"] == {"minMHz": 600, "maxMHz": 1500}
    assert "reportIntervalSeconds" in dumped
    assert parse_policy_spec(dumped) == spec


@pytest.mark.parametrize(
    ("spec", "field", "hint"),
    [
        ({"clockLimits": {"minMHz": 1500, "maxMHz": 1000}}, "spec.clockLimits.minMHz", "lower"),
        ({"strategy": "PowerCap"}, "spec.powerCap", "powerCap.watts"),
        ({"mode": "enforce"}, "spec.mode", "Enforce"),
        ({"slo": {"maxLatencyIncreasePercent": -1}}, "spec.slo.maxLatencyIncreasePercent", "0"),
        ({"triServe": {"thermal": {"headroom": 3}}}, "spec.triServe.thermal.headroom", "unknown"),
        (
            {"nodeSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
            "spec.nodeSelector.matchExpressions[0].values",
            "at least one",
        ),
    ],
)
def test_bad_spec_error_names_the_field_and_what_to_do(
    spec: dict[str, object], field: str, hint: str
) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy_spec(spec)
    message = str(info.value)
    assert message.startswith(field + ":") or f"; {field}:" in message, message
    assert hint in message


@pytest.mark.parametrize(
    ("key", "value", "stage"),
    [
        (LLM_D_ROLE_LABEL, "prefill", "prefill"),
        (LLM_D_ROLE_LABEL, "decode", "decode"),
        (DYNAMO_ROLE_LABEL, "Decode", "decode"),
        (KSERVE_COMPONENT_LABEL, "llama-workload-prefill", "prefill"),
        (KSERVE_COMPONENT_LABEL, "predictor", None),
        ("app", "prefill", None),
    ],
)
def test_role_labels_of_other_stacks_map_to_stages(key: str, value: str, stage: str | None) -> None:
    assert stage_from_role(key, value) == stage


@pytest.mark.parametrize(
    ("budget", "field"),
    [
        ({"watts": 0}, "spec.powerBudget.watts"),
        ({"watts": -5}, "spec.powerBudget.watts"),
        ({"watts": 1000, "marginPercent": 50}, "spec.powerBudget.marginPercent"),
        ({"watts": 1000, "marginPercent": -1}, "spec.powerBudget.marginPercent"),
    ],
)
def test_bad_power_budget_is_refused_naming_the_field(budget: dict[str, float], field: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy_spec({"powerBudget": budget})
    assert str(info.value).startswith(field + ":"), str(info.value)


def test_power_budget_usable_watts_leave_the_margin_out() -> None:
    spec = parse_policy_spec({"powerBudget": {"watts": 10_000, "marginPercent": 10}})
    assert spec.power_budget is not None
    assert spec.power_budget.usable_w == pytest.approx(9_000)
