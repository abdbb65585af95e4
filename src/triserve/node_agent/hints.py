"""Stage hints on the agent's side: parse, rate-limit and fold them into `StageHint`s.

Serving engines send tiny events (`triserve.hints`) through the agent's hint socket
(`triserve.node_agent.hintserver`), or the simulated node hands the same bytes in. Every
message goes through `HintBook.admit`, a per-pod token bucket and one for the whole node (a
flooding pod, or many pods each within their own rate, lose their excess messages, never the
agent's time; the hint server pauses that connection), then
`HintBook.receive_admitted`, which parses it with `parse_hint` — only the documented events,
a `HintError` naming the field for anything else — and folds it into one immutable
`StageHint` per pod, stamped with the agent's clock. `HintBook.take` does both, and never
raises.

`receive_admitted` returns whether the event changes what a controller would decide now (the
stage turned busy or idle, its phase changed, it handed off work): the agent then runs the
affected GPUs' control step at once instead of waiting for the next tick.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, replace

from triserve.hints import EVENTS, MAX_MESSAGE_BYTES, MAX_QUEUE, PHASES
from triserve.telemetry import StageHint

log = logging.getLogger("triserve.node_agent.agent")

#: Messages per second a pod may send on average, and the burst it may send at once.
RATE_PER_S = 200.0
BURST = 100.0
#: Messages per second the whole node may send on average, all pods together, and its burst:
#: what a pod may send is not what thirty pods may (the tick runs on the same event loop).
NODE_RATE_PER_S = 500.0
NODE_BURST = 250.0
#: Event ticks (control steps run at once on a hint) per second on the whole node, and their
#: burst: each costs NVML calls on the event loop. A change over this budget still updates
#: the pod's hint; the next regular tick acts on it.
EVENT_TICKS_PER_S = 100.0
EVENT_TICK_BURST = 10.0
#: Seconds without any message after which a pod's hints are stale (3 heartbeats).
HINT_MAX_AGE_S = 3.0

#: `HintBook.counts` keys, the `result` label of `triserve_agent_hints_total`.
ACCEPTED = "accepted"
INVALID = "invalid"
RATE_LIMITED = "rate-limited"
NODE_RATE_LIMITED = "node-rate-limited"
UNKNOWN_POD = "unknown-pod"
REFUSED = "refused"
RESULTS = (ACCEPTED, INVALID, RATE_LIMITED, NODE_RATE_LIMITED, UNKNOWN_POD, REFUSED)


class HintError(ValueError):
    """A hint message that is not one of the documented events."""


@dataclass(frozen=True, slots=True)
class HintEvent:
    """One parsed hint message."""

    event: str
    phase: str | None = None
    waiting: int | None = None
    running: int | None = None


def parse_hint(data: bytes) -> HintEvent:
    """Parse one message; raises `HintError` that names what was wrong."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise HintError(f"message of {len(data)} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise HintError(f"not a JSON object: {exc}") from None
    if not isinstance(body, dict):
        raise HintError('not a JSON object; send e.g. {"event":"idle"}')
    event = body.get("event")
    if event not in EVENTS:
        raise HintError(f"event {event!r} is not one of {', '.join(EVENTS)}")
    phase = body.get("phase")
    if event == "busy" and phase not in PHASES:
        raise HintError(f"phase {phase!r} of a busy event is not one of {', '.join(PHASES)}")
    if event != "busy" and phase is not None:
        raise HintError(f"phase is only for busy events, not {event!r}")
    counts: dict[str, int | None] = {}
    for name in ("waiting", "running"):
        value = body.get(name)
        if value is not None and (event != "queue" or not _is_count(value)):
            raise HintError(f"{name} must be an integer from 0 to {MAX_QUEUE} in a queue event")
        counts[name] = value
    if event == "queue" and counts["waiting"] is None:
        raise HintError("a queue event needs waiting")
    return HintEvent(event, phase, counts["waiting"], counts["running"])


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_QUEUE


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at_s: float

    def take(self, now_s: float, rate_per_s: float, burst: float) -> bool:
        """Refill for the time since the last call, then take one token if there is one."""
        elapsed_s = now_s - self.at_s if math.isfinite(now_s) else 0.0
        self.tokens = min(burst, self.tokens + max(elapsed_s, 0.0) * rate_per_s)
        self.at_s = max(self.at_s, now_s)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def give_back(self) -> None:
        """Return the token just taken (another limit refused the message)."""
        self.tokens += 1.0


class HintBook:
    """Every pod's latest `StageHint`, with per-pod and node-wide rate limits and counters."""

    def __init__(
        self,
        *,
        rate_per_s: float = RATE_PER_S,
        burst: float = BURST,
        node_rate_per_s: float = NODE_RATE_PER_S,
        node_burst: float = NODE_BURST,
        event_ticks_per_s: float = EVENT_TICKS_PER_S,
        event_tick_burst: float = EVENT_TICK_BURST,
        max_age_s: float = HINT_MAX_AGE_S,
    ) -> None:
        """`max_age_s` is how long a pod's hints count after its last message."""
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.node_rate_per_s = node_rate_per_s
        self.node_burst = node_burst
        self.event_ticks_per_s = event_ticks_per_s
        self.event_tick_burst = event_tick_burst
        self.max_age_s = max_age_s
        self.hints: dict[tuple[str, str], StageHint] = {}
        self.counts: Counter[str] = Counter()
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._node: _Bucket | None = None
        self._event_ticks: _Bucket | None = None

    def admit(self, key: tuple[str, str], now_s: float) -> bool:
        """Take a token from pod `key`'s bucket and the node's; False (counted) if either is out.

        A pod over its own rate is `rate-limited`; a pod within it while all pods together
        are over the node's is `node-rate-limited` (and keeps its token).
        """
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.burst, now_s)
        if self._node is None:
            self._node = _Bucket(self.node_burst, now_s)
        if not bucket.take(now_s, self.rate_per_s, self.burst):
            self.counts[RATE_LIMITED] += 1
            return False
        if not self._node.take(now_s, self.node_rate_per_s, self.node_burst):
            bucket.give_back()
            self.counts[NODE_RATE_LIMITED] += 1
            return False
        return True

    def receive_admitted(self, key: tuple[str, str], data: bytes, now_s: float) -> bool:
        """`receive` for a message `admit` already let through."""
        try:
            event = parse_hint(data)
        except HintError:
            self.counts[INVALID] += 1
            raise
        self.counts[ACCEPTED] += 1
        return self.apply(key, event, now_s)

    def apply(self, key: tuple[str, str], event: HintEvent, now_s: float) -> bool:
        """Fold a parsed event into pod `key`'s hint; True when it changes a decision now."""
        old = self.hints.get(key)
        base = old if old is not None and old.fresh(now_s) else StageHint(now_s)
        new = replace(base, received_s=now_s, max_age_s=self.max_age_s)
        if event.event == "busy":
            new = replace(new, busy=True, phase=event.phase)
        elif event.event == "idle":
            # Idle means nothing queued or running either, whatever the last queue event said.
            new = replace(
                new,
                busy=False,
                phase=None,
                waiting=None if new.waiting is None else 0,
                running=None if new.running is None else 0,
            )
        elif event.event == "handoff":
            new = replace(new, handoff_s=now_s)
        elif event.event == "queue":
            new = replace(new, waiting=event.waiting, running=event.running)
        self.hints[key] = new
        if event.event == "handoff":
            return True
        was = old if old is not None and old.fresh(now_s) else None
        if was is None:
            return new.has_work
        return (was.has_work, was.phase) != (new.has_work, new.phase)

    def take(self, key: tuple[str, str] | None, data: bytes, now_s: float) -> tuple[bool, bool]:
        """One message from pod `key` (None: not a pod of this node): (admitted, changed).

        Never raises: an unknown pod or a malformed message is counted and dropped (admitted,
        unchanged); a message over the pod's or the node's rate is not admitted (the server
        then pauses that connection). `changed`: the hint changes what a controller would
        decide now, and the node's event-tick budget has room to act on it at once.
        """
        if key is None:
            self.unknown_pod()
            return True, False
        if not self.admit(key, now_s):
            return False, False
        try:
            changed = self.receive_admitted(key, data, now_s)
        except HintError as exc:
            # Counted, logged quietly: a broken sender must not flood the agent's log.
            log.debug("hint from pod %s/%s dropped: %s", *key, exc)
            return True, False
        return True, changed and self._event_tick_allowed(now_s)

    def _event_tick_allowed(self, now_s: float) -> bool:
        """Whether the node's event-tick budget has room for one more now."""
        if self._event_ticks is None:
            self._event_ticks = _Bucket(self.event_tick_burst, now_s)
        return self._event_ticks.take(now_s, self.event_ticks_per_s, self.event_tick_burst)

    def refused(self, why: str) -> None:
        """Count a connection the hint server refused (its sender could not be identified)."""
        self.counts[REFUSED] += 1
        log.debug("stage hints: connection refused (%s)", why)

    def unknown_pod(self) -> None:
        """Count a message from a pod that is not a serving pod of this node."""
        self.counts[UNKNOWN_POD] += 1

    def hint(self, key: tuple[str, str]) -> StageHint | None:
        """Pod `key`'s latest hint (possibly stale), or None."""
        return self.hints.get(key)

    def keep(self, keys: set[tuple[str, str]]) -> None:
        """Forget pods that left the node."""
        self.hints = {k: v for k, v in self.hints.items() if k in keys}
        self._buckets = {k: v for k, v in self._buckets.items() if k in keys}
