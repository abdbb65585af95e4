"""One retry schedule for everything that retries: exponential backoff with an optional cap.

Used by the node agent (restores that did not verify, the cluster watches) and the operator
(node label writes that keep failing). Times are in the caller's clock: a `Backoff` never
reads a clock itself, so the agent's tick clock, `time.monotonic()` and a simulated node all
drive it the same way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(slots=True)
class Backoff:
    """When to try again after failures: `first_s`, doubling after each failure up to `max_s`.

    `attempts` counts failures since the last success; `next_s` is when the next try may
    run; `problem` is what the last failure said.
    """

    first_s: float = 0.5
    max_s: float = 30.0
    attempts: int = 0
    next_s: float = 0.0
    problem: str = ""

    def delay_s(self) -> float:
        """The wait that follows the current failure count (`first_s` after the first)."""
        if self.attempts <= 0:
            return 0.0
        return min(self.first_s * 2.0 ** (self.attempts - 1), self.max_s)

    def failed(self, now_s: float, problem: str = "") -> float:
        """Record a failure at `now_s`; schedules the next try and returns the wait in s."""
        self.attempts += 1
        self.problem = problem
        delay_s = self.delay_s()
        self.next_s = now_s + delay_s
        return delay_s

    def succeeded(self) -> None:
        """A try worked: the next failure waits `first_s` again."""
        self.attempts = 0
        self.next_s = 0.0
        self.problem = ""

    def due(self, now_s: float) -> bool:
        """True when the next try may run."""
        return now_s >= self.next_s


def jittered(value_s: float, spread: float = 0.1) -> float:
    """`value_s` moved by up to ±`spread` of itself, so many clients spread their requests."""
    return value_s * (1.0 + random.uniform(-spread, spread))
