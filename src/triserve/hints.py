"""Stage hints: a serving engine tells the triserve node agent what its stage does, at once.

The agent otherwise learns a stage's state from scrapes of its `/metrics` (every 0.5 s) and
from GPU counters (every control tick), so it reacts a tick or a scrape late: a prefill that
starts on a GPU locked at a decode clock runs at that clock until the next tick. A hint is a
few bytes the engine sends when its state changes; the agent runs that GPU's control step on
receipt (docs/serving-pods.md, "Stage hints").

This module is the client. It imports only the standard library, so a serving image can
vendor this one file instead of installing triserve. Events (one JSON object per message):

- ``busy`` with ``phase`` ``prefill``, ``decode`` or ``oneshot``: the stage runs that now;
- ``idle``: the stage has nothing to run;
- ``handoff``: the stage just sent work downstream (the next stage will be busy soon);
- ``queue`` with ``waiting`` (and optionally ``running``): the engine's queue depth;
- ``alive``: nothing changed; `heartbeat` sends it so the agent knows hints are current.

Messages go over a unix SOCK_SEQPACKET socket (one message per packet, no framing) that the
agent creates in a hostPath directory the pod mounts; the agent identifies the sending pod
from the connection's credentials, so a message carries no name and a pod can speak only for
its own stage. Sending never blocks and never raises: when the agent is absent, restarting or
busy, the event is dropped (counted in `dropped`) and the agent falls back to scraping.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable

#: Where the agent listens (the chart mounts the host directory at this path in both pods).
DEFAULT_SOCKET = "/var/run/triserve/hints.sock"
#: Environment variable that overrides `DEFAULT_SOCKET` in the serving pod.
SOCKET_ENV = "TRISERVE_HINTS_SOCKET"
#: The events the agent accepts.
EVENTS = ("busy", "idle", "handoff", "queue", "alive")
#: The phases a ``busy`` event may name.
PHASES = ("prefill", "decode", "oneshot")
#: The largest message the agent reads; longer ones are rejected.
MAX_MESSAGE_BYTES = 256
#: Largest queue depth a message may carry.
MAX_QUEUE = 1_000_000
#: Seconds between heartbeats; the agent treats a pod silent for 3 of them as not hinting.
HEARTBEAT_S = 1.0


def encode(
    event: str,
    *,
    phase: str | None = None,
    waiting: int | None = None,
    running: int | None = None,
) -> bytes:
    """One hint message; raises ValueError naming the bad field (a caller's bug)."""
    if event not in EVENTS:
        raise ValueError(f"event {event!r} is not one of {', '.join(EVENTS)}")
    body: dict[str, object] = {"event": event}
    if event == "busy":
        if phase not in PHASES:
            raise ValueError(f"a busy event needs phase, one of {', '.join(PHASES)}; got {phase!r}")
        body["phase"] = phase
    elif phase is not None:
        raise ValueError(f"phase is only for busy events, not {event!r}")
    for name, value in (("waiting", waiting), ("running", running)):
        if value is None:
            continue
        if event != "queue":
            raise ValueError(f"{name} is only for queue events, not {event!r}")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_QUEUE:
            raise ValueError(f"{name} must be an integer from 0 to {MAX_QUEUE}; got {value!r}")
        body[name] = value
    if event == "queue" and waiting is None:
        raise ValueError("a queue event needs waiting (the number of queued requests)")
    return json.dumps(body, separators=(",", ":")).encode()


class HintClient:
    """Sends one serving process's stage hints to the node agent; safe from any thread."""

    def __init__(
        self,
        path: str | None = None,
        *,
        heartbeat_s: float = HEARTBEAT_S,
        retry_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`path` None: `$TRISERVE_HINTS_SOCKET`, else `DEFAULT_SOCKET`.

        A failed connect is retried at most every `retry_s` seconds, on the next send.
        """
        self.path = path or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET
        self.heartbeat_s = heartbeat_s
        self.retry_s = retry_s
        self._clock = clock
        self._sock: socket.socket | None = None
        self._next_connect_s = 0.0
        self._last_sent_s = -float("inf")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Events sent, and events dropped because the agent could not take them.
        self.sent = 0
        self.dropped = 0

    # ---- events ---------------------------------------------------------------------------
    def busy(self, phase: str) -> bool:
        """The stage now runs `phase` (prefill, decode or oneshot). True when sent."""
        return self.send(encode("busy", phase=phase))

    def idle(self) -> bool:
        """The stage has nothing to run. True when sent."""
        return self.send(encode("idle"))

    def handoff(self) -> bool:
        """The stage just sent work to its downstream stage. True when sent."""
        return self.send(encode("handoff"))

    def queue(self, waiting: int, running: int | None = None) -> bool:
        """The engine's queue depth: requests `waiting` (and `running`). True when sent."""
        return self.send(encode("queue", waiting=waiting, running=running))

    def heartbeat(self) -> bool:
        """Send ``alive`` when nothing was sent for `heartbeat_s`; call it from a loop."""
        if self._clock() - self._last_sent_s < self.heartbeat_s:
            return False
        return self.send(encode("alive"))

    def start_heartbeat(self) -> None:
        """Run `heartbeat` every `heartbeat_s` on a daemon thread (until `close`)."""
        if self._thread is not None:
            return

        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s / 2):
                self.heartbeat()

        self._thread = threading.Thread(target=beat, name="triserve-hints", daemon=True)
        self._thread.start()

    # ---- transport ------------------------------------------------------------------------
    def send(self, message: bytes) -> bool:
        """Send one encoded message without blocking; False when it was dropped."""
        with self._lock:
            sock = self._connected()
            if sock is None:
                self.dropped += 1
                return False
            try:
                sock.send(message)
            except BlockingIOError:
                self.dropped += 1  # the agent is behind: drop, never stall the engine
                return False
            except OSError:
                self._drop_socket()
                self.dropped += 1
                return False
            self.sent += 1
            self._last_sent_s = self._clock()
            return True

    def close(self) -> None:
        """Stop the heartbeat thread and close the socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        with self._lock:
            self._drop_socket()

    def _connected(self) -> socket.socket | None:
        if self._sock is not None:
            return self._sock
        now_s = self._clock()
        if now_s < self._next_connect_s:
            return None
        self._next_connect_s = now_s + self.retry_s
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.settimeout(0.05)
            sock.connect(self.path)
            sock.setblocking(False)
        except OSError:
            sock.close()
            return None
        self._sock = sock
        return sock

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
