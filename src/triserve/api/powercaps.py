"""The `triserve.io/power-caps` Node annotation: per-GPU power caps from the operator.

The operator shares a policy's power budget across its GPUs (`triserve.operator.budget`) and
writes each node's share on that node as this annotation; the node's agent already watches
its own Node for the policy label, so the caps reach it on the same watch with no new
object, RBAC rule or connection (docs/power-budget.md). The value is compact JSON naming the
policy the caps belong to, so an agent never applies a cap written for another policy:

    {"policy":"fleet-budget","watts":{"GPU-5d2c…":412,"GPU-77a0…":300}}

`format_power_caps` and `parse_power_caps` are the only writer and reader.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from triserve.api.annotations import GROUP

POWER_CAPS_ANNOTATION: Final = f"{GROUP}/power-caps"
#: Bounds a reader accepts: GPUs per node and watts per cap.
MAX_GPUS: Final = 64
MAX_CAP_W: Final = 5000
#: Longest annotation value read (a real one is well under 100 bytes per GPU).
MAX_CHARS: Final = 16_384


class PowerCapsError(ValueError):
    """The annotation cannot be used; the message says what is wrong with it."""


@dataclass(frozen=True, slots=True)
class PowerCaps:
    """The caps the operator gave one node's GPUs under `policy`: GPU UUID → watts."""

    policy: str
    watts: Mapping[str, int] = field(default_factory=dict)


def format_power_caps(caps: PowerCaps) -> str:
    """The annotation value for `caps` (keys sorted, so equal caps give equal text)."""
    body = {"policy": caps.policy, "watts": dict(sorted(caps.watts.items()))}
    return json.dumps(body, separators=(",", ":"))


def parse_power_caps(text: str) -> PowerCaps:
    """Read an annotation value; raises `PowerCapsError` naming what is wrong."""
    where = f"annotation {POWER_CAPS_ANNOTATION}"
    if len(text) > MAX_CHARS:
        raise PowerCapsError(f"{where}: {len(text)} characters, over {MAX_CHARS}")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise PowerCapsError(f"{where}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("policy"), str):
        raise PowerCapsError(f'{where}: expected {{"policy": NAME, "watts": {{UUID: W}}}}')
    watts = data.get("watts")
    if not isinstance(watts, dict) or len(watts) > MAX_GPUS:
        raise PowerCapsError(f"{where}: watts must map at most {MAX_GPUS} GPU UUIDs to watts")
    caps: dict[str, int] = {}
    for uuid, value in watts.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CAP_W:
            raise PowerCapsError(
                f"{where}: watts[{uuid!r}] is {value!r}; expected whole watts in 1..{MAX_CAP_W}"
            )
        caps[str(uuid)] = value
    return PowerCaps(policy=data["policy"], watts=caps)
