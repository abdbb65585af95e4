"""The agent's hint endpoint: a unix SOCK_SEQPACKET socket in a hostPath directory.

Started by `triserve.node_agent.runtime` when `triserve agent --hints-socket PATH` is given
(the chart's `agent.hints.enabled`). Serving pods mount the same host directory and send
`triserve.hints` messages. Who may speak for which stage is decided here, not by the
message: at accept time the kernel's SO_PEERCRED gives the connecting process's PID (in
the agent's PID namespace, hence the chart's ``hostPID: true``), and that process's cgroup
path (``/proc/<pid>/cgroup``) names its pod's UID at the level where the kubelet's cgroup
driver puts it (``kubepods/<qos>/pod<uid>/<container>``, or with systemd
``kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid with _>.slice/<runtime>-<id>.scope``;
`pod_uid_from_cgroup_path`). Only the first pod segment counts, and a path off that layout
names no pod: cgroups below the container's belong to the tenant, who may name one after
another pod. A connection whose peer is not in a pod the agent knows is closed, and every
message on a connection is attributed to that pod only: a pod can speak only for itself.

Limits: `MAX_CONNECTIONS` on the node and `MAX_PER_POD` per pod; messages beyond the pod's
rate or the node's (all pods together) are dropped by `HintBook`, and a connection whose
message was dropped is not read for `FLOOD_PAUSE_S`, so the kernel pushes back on the sender
instead of the agent spinning. The receive loop yields to the event loop after every message
(a ready socket's ``sock_recv`` returns without yielding), so the control tick, which runs on
the same loop, keeps its period whatever the senders do. Nothing of a connection is kept
after it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import stat
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from triserve.hints import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 128
MAX_PER_POD = 8
#: How long a connection whose messages are being rate-limited is left unread.
FLOOD_PAUSE_S = 0.1
#: How long `bind` waits to learn whether a socket left at the path is still served.
PROBE_TIMEOUT_S = 1.0

#: A pod UID with its separators as each cgroup driver writes them.
_UID = r"[0-9a-f]{{8}}{0}[0-9a-f]{{4}}{0}[0-9a-f]{{4}}{0}[0-9a-f]{{4}}{0}[0-9a-f]{{12}}"
#: The QoS classes with a cgroup level of their own (Guaranteed pods sit right under kubepods).
_QOS = ("burstable", "besteffort")
#: cgroupfs driver: ``kubepods[/<qos>]/pod<uid>/<container>``.
_CGROUPFS_POD = re.compile(rf"pod(?P<uid>{_UID.format('-')})")
#: systemd driver: ``kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid_>.slice/
#: <runtime>-<id>.scope``, the UID's dashes escaped to ``_``; a kubelet ``--cgroup-root``
#: prefixes every name (``kubelet-kubepods-…``).
_SYSTEMD_POD = re.compile(
    r"(?P<parent>(?:[A-Za-z0-9_]+-)*kubepods(?:-burstable|-besteffort)?)"
    rf"-pod(?P<uid>{_UID.format('_')})\.slice"
)

#: Delivers one message from the pod with this UID: (uid, message) -> accepted (False:
#: rate-limited or unknown pod, so the connection pauses).
Deliver = Callable[[str, bytes], bool]
#: Whether a pod UID belongs to a serving pod on this node.
KnownPod = Callable[[str], bool]


class HintSocketPathError(OSError):
    """The hint socket's path is taken by something the agent must not replace."""


def pod_uid_from_cgroup(text: str) -> str | None:
    """The pod UID in a ``/proc/<pid>/cgroup`` text (None: not a pod, or off the layout).

    Every line (one per cgroup v1 hierarchy, or the single v2 ``0::`` line) is read with
    `pod_uid_from_cgroup_path`; lines without a pod segment are skipped, and the text names a
    pod only when no line is off the kubelet's layout and all that name one agree.
    """
    found: set[str] = set()
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        path = parts[2]
        if _first_pod_segment(path.split("/")) is None:
            continue
        uid = pod_uid_from_cgroup_path(path)
        if uid is None:
            return None
        found.add(uid)
    return found.pop() if len(found) == 1 else None


def pod_uid_from_cgroup_path(path: str) -> str | None:
    """The UID of the pod whose cgroup holds `path`, read where the kubelet puts it.

    The kubelet's layout (docs/serving-pods.md, "Who may speak"): under the ``kubepods`` root
    comes the QoS class (none for Guaranteed pods), then the pod, then the container's cgroup
    the runtime made; below that, cgroups belong to the tenant, who may name them anything,
    ``pod<another uid>`` included. So only the first pod segment counts, and it counts only
    with exactly the kubelet's levels above it and a container below it; None otherwise. A
    path read from inside the agent's cgroup namespace starts with ``..`` (cgroup_namespaces(7))
    and shows only the levels below the agent's and the peer's common ancestor, so there the
    levels above the pod may be cut short from the top.
    """
    segments = [s for s in path.split("/") if s]
    start = 0
    while start < len(segments) and segments[start] == "..":
        start += 1
    relative, segments = start > 0, segments[start:]
    first = _first_pod_segment(segments)
    if first is None or first[0] == len(segments) - 1:  # no pod, or no container below it
        return None
    index, uid, chain = first
    before = segments[:index]
    if len(before) >= len(chain) and before[len(before) - len(chain) :] == chain:
        return uid
    if relative and any(before == chain[k:] for k in range(1, len(chain) + 1)):
        return uid
    return None


def _first_pod_segment(segments: list[str]) -> tuple[int, str, list[str]] | None:
    """(index, UID, the kubelet levels that must sit above it) of the first pod segment."""
    for index, segment in enumerate(segments):
        if match := _CGROUPFS_POD.fullmatch(segment):
            parent = segments[index - 1] if index > 0 else ""
            chain = ["kubepods", parent] if parent in _QOS else ["kubepods"]
            return index, match["uid"], chain
        if match := _SYSTEMD_POD.fullmatch(segment):
            names = match["parent"].split("-")
            root = len(names) - (2 if names[-1] in _QOS else 1)
            chain = ["-".join(names[: k + 1]) + ".slice" for k in range(root, len(names))]
            return index, match["uid"].replace("_", "-"), chain
    return None


def _file_kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISDIR(mode):
        return "directory"
    return "regular file" if stat.S_ISREG(mode) else "special file"


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
        """Create the socket (replacing a stale one a crashed agent left) and listen.

        Raises `HintSocketPathError` when the path holds anything else: a file that is not a
        socket (never deleted: it is not ours) or a socket another process still serves.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale_socket()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.bind(str(self.path))
        # Serving containers run as any user; identity comes from the peer's cgroup.
        os.chmod(self.path, 0o666)
        sock.listen(64)
        sock.setblocking(False)
        self._sock = sock

    def _remove_stale_socket(self) -> None:
        """Unlink a socket nobody listens on any more; refuse anything else at the path."""
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        where = f"--hints-socket {self.path}"
        if not stat.S_ISSOCK(mode):
            raise HintSocketPathError(
                f"{where} exists and is not a socket (a {_file_kind(mode)}); the agent never "
                "deletes it: move it away or give --hints-socket another path"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        probe.settimeout(PROBE_TIMEOUT_S)
        try:
            probe.connect(str(self.path))
        except (ConnectionRefusedError, FileNotFoundError):
            # Nobody listens: a socket a stopped or crashed agent left behind.
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return
        except OSError as exc:
            raise HintSocketPathError(
                f"{where} is a socket another process still serves ({exc.strerror or exc}); "
                "stop it or give --hints-socket another path"
            ) from None
        finally:
            probe.close()
        raise HintSocketPathError(
            f"{where} is a socket another process still serves (a second agent?); stop it "
            "or give --hints-socket another path"
        )

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
                # Yield after every message: a ready socket's recv does not, and the control
                # tick runs on this loop. A refused message pauses this connection.
                await asyncio.sleep(0 if self.deliver(uid, data) else FLOOD_PAUSE_S)
        finally:
            # Nothing of a connection outlives it: pods come and go over the agent's uptime.
            self._per_pod[uid] -= 1
            if self._per_pod[uid] <= 0:
                del self._per_pod[uid]
            conn.close()
