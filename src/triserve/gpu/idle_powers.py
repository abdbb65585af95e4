"""Published idle powers per GPU model, without and with a CUDA context resident.

One table, read by the simulator's device profiles (`triserve.sim.profiles`) and by the
node agent's Observe-mode estimate (`triserve.node_agent.accounting`). Figures from the
controlled runs of arXiv 2605.23918 ("The Model Parking Tax"); GPU models it did not
measure are absent, so nothing is estimated for them from a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

__all__ = ["PUBLISHED", "IdlePowers", "published_idle_powers"]


@dataclass(frozen=True, slots=True)
class IdlePowers:
    """Idle board power in W: lowest performance state, and boost state held by a context."""

    bare_w: float
    context_w: float

    @property
    def premium_w(self) -> float:
        """What a resident context costs an idle GPU."""
        return self.context_w - self.bare_w


#: (substring of the NVML device name, idle powers), most specific first.
PUBLISHED: tuple[tuple[str, IdlePowers], ...] = (
    ("H100 80GB HBM3", IdlePowers(71.8, 121.7)),
    ("H100 SXM", IdlePowers(71.8, 121.7)),
    ("A100", IdlePowers(53.7, 80.0)),
    ("L40S", IdlePowers(35.6, 102.1)),
)


@cache  # read on every Observe-mode tick; a node has a handful of device names
def published_idle_powers(device_name: str) -> IdlePowers | None:
    """The published idle powers of the GPU model NVML names `device_name`, if measured."""
    for key, powers in PUBLISHED:
        if key in device_name:
            return powers
    return None
