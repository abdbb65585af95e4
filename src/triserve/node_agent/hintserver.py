"""The agent's hint endpoint: a unix SOCK_SEQPACKET socket in a hostPath directory.

Started by `triserve.node_agent.runtime` when `triserve agent --hints-socket PATH` is given
(the chart's `agent.hints.enabled`). Serving pods mount the same host directory and send
`triserve.hints` messages. Who may speak for which stage is decided here, not by the
message: at accept time the kernel's SO_PEERCRED gives the connecting process's PID (in
the agent's PID namespace, hence the chart's ``hostPID: true``), and that process's cgroup
path (``/proc/<pid>/cgroup``) names its pod's UID, as kubelet's cgroup drivers write it
(``…/kubepods…/pod<uid>/…`` or ``…kubepods-…-pod<uid with _>.slice/…``). A connection
whose peer is not in a pod the agent knows is closed, and every message on a connection is
attributed to that pod only: a pod can speak only for itself.

Limits: `MAX_CONNECTIONS` in all and `MAX_PER_POD` per pod; messages beyond the pod's rate
are dropped by `HintBook`, and a connection that keeps flooding is not read for
`FLOOD_PAUSE_S`, so the kernel pushes back on the sender instead of the agent spinning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from triserve.hints import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 256
MAX_PER_POD = 8
#: How long a connection whose messages are being rate-limited is left unread.
FLOOD_PAUSE_S = 0.1

_POD_UID_RE = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
)

#: Delivers one message from the pod with this UID: (uid, message) -> accepted (False:
#: rate-limited or unknown pod, so the connection pauses).
Deliver = Callable[[str, bytes], bool]
#: Whether a pod UID belongs to a serving pod on this node.
KnownPod = Callable[[str], bool]


def pod_uid_from_cgroup(text: str) -> str | None:
    """The pod UID in a ``/proc/<pid>/cgroup`` text (None: not a Kubernetes pod)."""
    for line in text.splitlines():
        if "kubepods" not in line:
            continue
        found = _POD_UID_RE.findall(line)
        if found:
            return str(found[-1]).replace("_", "-")
    return None


def peer_pid(sock: socket.socket) -> int:
    """The PID of the process at the other end of a unix socket (0: not visible here)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _uid, _gid = struct.unpack("3i", creds)
    return int(pid)


class HintServer:
    """Accepts hint connections and hands each message to `deliver` as its pod's."""

    def __init__(
        self,
        path: str | Path,
        deliver: Deliver,
        known_pod: KnownPod,
        *,
        proc_root: str | Path = "/proc",
        max_connections: int = MAX_CONNECTIONS,
        max_per_pod: int = MAX_PER_POD,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        """Serve hints at `path`; nothing is bound until `start` (or `bind`).

        `proc_root` is where the peers' /proc entries are read (tests point it elsewhere);
        `on_refused(why)` is told of every connection closed unheard.
        """
        self.path = Path(path)
        self.deliver = deliver
        self.known_pod = known_pod
        self.proc_root = Path(proc_root)
        self.max_connections = max_connections
        self.max_per_pod = max_per_pod
        self.refused: Counter[str] = Counter()
        self.on_refused = on_refused
        self._per_pod: Counter[str] = Counter()
        self._sock: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting: asyncio.Task[None] | None = None

    def bind(self) -> None:
        """Create the socket (replacing a stale one a crashed agent left) and listen."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if self.path.is_socket():
                self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.bind(str(self.path))
        # Serving containers run as any user; identity comes from the peer's cgroup.
        os.chmod(self.path, 0o666)
        sock.listen(64)
        sock.setblocking(False)
        self._sock = sock

    async def start(self) -> None:
        """Bind and accept connections on the running loop until `close`."""
        self.bind()
        self._accepting = asyncio.create_task(self._accept_loop(), name="hint-accept")

    async def close(self) -> None:
        """Stop accepting, close every connection and remove the socket file."""
        tasks = [t for t in (self._accepting, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def identify(self, conn: socket.socket) -> str | None:
        """The UID of the pod the peer runs in, or None (counted in `refused`)."""
        pid = peer_pid(conn)
        if pid <= 0:
            self._refuse("no-pid")
            return None
        try:
            text = (self.proc_root / str(pid) / "cgroup").read_text()
        except OSError:
            self._refuse("no-cgroup")
            return None
        uid = pod_uid_from_cgroup(text)
        if uid is None or not self.known_pod(uid):
            self._refuse("unknown-pod")
            return None
        return uid

    def _refuse(self, why: str) -> None:
        self.refused[why] += 1
        if self.on_refused is not None:
            self.on_refused(why)

    async def _accept_loop(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self._sock)
            uid = self.identify(conn) if len(self._tasks) < self.max_connections else None
            if uid is not None and self._per_pod[uid] >= self.max_per_pod:
                self._refuse("too-many-connections")
                uid = None
            if uid is None:
                if len(self._tasks) >= self.max_connections:
                    self._refuse("too-many-connections")
                conn.close()
                continue
            self._per_pod[uid] += 1
            task = asyncio.create_task(self._serve(conn, uid), name=f"hints-{uid}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket, uid: str) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        try:
            while True:
                try:
                    data = await loop.sock_recv(conn, MAX_MESSAGE_BYTES + 1)
                except OSError:
                    return
                if not data:
                    return
                if not self.deliver(uid, data):
                    await asyncio.sleep(FLOOD_PAUSE_S)
        finally:
            self._per_pod[uid] -= 1
            conn.close()
