"""The triserve.io/power-caps annotation: what the operator writes, the agent reads back."""

from __future__ import annotations

import pytest

from triserve.api.powercaps import PowerCaps, PowerCapsError, format_power_caps, parse_power_caps


def test_caps_round_trip_through_the_annotation() -> None:
    caps = PowerCaps("fleet", {"GPU-b": 300, "GPU-a": 412})
    text = format_power_caps(caps)
    assert text == '{"policy":"fleet","watts":{"GPU-a":412,"GPU-b":300}}'
    assert parse_power_caps(text) == caps


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("not json", "not JSON"),
        ('{"watts": {}}', '"policy"'),
        ('{"policy": "p", "watts": {"GPU-a": 0}}', "watts['GPU-a'] is 0"),
        ('{"policy": "p", "watts": {"GPU-a": 412.5}}', "whole watts"),
        ('{"policy": "p", "watts": {"GPU-a": true}}', "whole watts"),
    ],
)
def test_a_bad_annotation_is_refused_saying_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(PowerCapsError) as info:
        parse_power_caps(text)
    assert "triserve.io/power-caps" in str(info.value) and says in str(info.value)
