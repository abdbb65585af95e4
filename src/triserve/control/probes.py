"""Baseline probes: a few ticks handed back to the PMU default so the agent can price a lock.

The node agent estimates what a GPU would draw at PMU-default clocks from its own samples
taken while the GPU ran settled at default (`triserve.node_agent.accounting`). Tri-serve locks
memory-bound decode and stalls whenever it sees them, so those states are almost never seen
at default. A probe fills the gap: at most once per `ProbeSettings.interval_s`, while the
loop holds a lock in a state the agent has few default samples of, the loop holds the PMU
default for long enough for the clock to settle and a few samples to be taken. A probe only
raises clocks, so it can only shorten latency; it costs a little energy.

`ProbeSchedule` is owned by the GPU (it outlives the loops a policy change rebuilds) and
advanced only by `triserve.control.loop.ControlLoop`, which is the only thing that sets clocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """Baseline probes: how often, how long to settle and how many samples to take.

    `interval_s` 0 disables probes. A probe holds the PMU default for
    ``settle ticks + measure_ticks + 1`` ticks (the first tick's sample still covers the
    lock); settle ticks are at least `min_settle_ticks` and cover `settle_s`, the time a
    clock change takes to show in a whole sample period. Bins with `enough_samples` or more
    are not probed.
    """

    interval_s: float = 60.0
    settle_s: float = 0.1
    min_settle_ticks: int = 2
    measure_ticks: int = 4
    enough_samples: int = 12

    def settle_ticks(self, tick_s: float) -> int:
        """Ticks at default after an unlock before a sample is trusted."""
        return max(self.min_settle_ticks, math.ceil(self.settle_s / tick_s - 1e-9))

    def hold_s(self, tick_s: float) -> float:
        """How long a probe holds the default, in seconds of the loop's clock."""
        ticks = self.settle_ticks(tick_s) + self.measure_ticks + 1
        return (ticks + 0.5) * tick_s


@dataclass(slots=True)
class ProbeSchedule:
    """One GPU's probes: its settings, when the next may start, and how many have run (`count`)."""

    settings: ProbeSettings
    next_s: float = 0.0
    count: int = 0

    def start(self, now_s: float) -> None:
        """A probe starts at `now_s`: the next waits a whole interval."""
        self.next_s = now_s + self.settings.interval_s
        self.count += 1
