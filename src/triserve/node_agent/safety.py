"""Keep GPUs safe whatever happens to the agent: the state file, checked setters, a watchdog.

- `StateFile`: JSON on a hostPath (default ``/var/lib/triserve/state.json``) naming every GPU
  on which triserve may hold a clock lock or a changed power limit. A GPU is recorded
  *before* a lock is applied (on every path) and leaves the record only after its restore
  was read back (`triserve.node_agent.restore`). Writes are atomic: temp file, fsync,
  rename, fsync of the directory. A write that fails never aborts a release or a shutdown:
  the record stays in memory, `write_error` says why, and the agent reports Degraded. An
  exclusive `flock` on ``state.json.lock`` makes a second agent on the node refuse to start.
  Any content that is not exactly what this module writes reads as "restore every GPU", and
  so does a file that is not a regular file or is over `MAX_STATE_FILE_BYTES` (the read is
  bounded: no symlink followed, no blocking open, one capped read).
- `restore_stale`: the start-up restore of whatever the file lists.
- `GuardedBackend`: wraps the real `GpuBackend`; records to the state file before any setter
  and holds clocks and power limits at or above the cluster's guard rails (`GuardRails`),
  whatever the controller asks for (the policy's clock limits are the control loop's job).
- `Watchdog`: a thread that resets every GPU to defaults if the control tick stalls.

Used by `triserve.node_agent.agent.NodeAgent`; nothing here knows about Kubernetes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triserve.gpu.backend import GpuBackend, GpuError
from triserve.gpu.delegating import DelegatingBackend
from triserve.node_agent.restore import StartupRestore, entry_index, restore_gpu, stale_indices

log = logging.getLogger(__name__)

DEFAULT_STATE_FILE = Path("/var/lib/triserve/state.json")
#: The largest state file read (a real one is well under 1 KiB per GPU).
MAX_STATE_FILE_BYTES = 1024 * 1024


class StateFileBusyError(RuntimeError):
    """Another agent holds the state file's lock: two agents must never share one node."""


class StateWriteError(GpuError):
    """A lock was refused because the state file could not record it first."""


@dataclass(frozen=True, slots=True)
class StaleEntries:
    """What the file says an earlier run held: entries by UUID, or `everything`."""

    entries: dict[str, dict[str, Any]]
    everything: bool = False
    reason: str = ""


def parse_state(text: str) -> StaleEntries:
    """Read the file's content defensively; anything unexpected means `everything`."""

    def unreadable(why: str) -> StaleEntries:
        return StaleEntries({}, everything=True, reason=why)

    try:
        data = json.loads(text)
    except ValueError as exc:
        return unreadable(f"not JSON ({exc})")
    except RecursionError:
        return unreadable("JSON nested too deep to parse")
    if not isinstance(data, dict):
        return unreadable(f"top level is {type(data).__name__}, not an object")
    gpus = data.get("gpus")
    if not isinstance(gpus, dict):
        return unreadable(f"'gpus' is {type(gpus).__name__}, not an object")
    entries: dict[str, dict[str, Any]] = {}
    for uuid, entry in gpus.items():
        if not isinstance(entry, dict):
            return unreadable(f"entry {uuid!r} is {type(entry).__name__}, not an object")
        entries[str(uuid)] = dict(entry)
    return StaleEntries(entries)


class StateFile:
    """Which GPUs (by UUID) triserve may have changed; survives agent crashes."""

    def __init__(self, path: Path) -> None:
        """`path` need not exist; its directory is created on first write."""
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self._lock = threading.Lock()
        self._held: dict[str, dict[str, Any]] = {}
        self._lock_fd: int | None = None
        #: Why the last write failed (None: the file on disk matches memory).
        self.write_error: str | None = None
        self.write_failures = 0
        self._on_write_error: Callable[[str], None] | None = None

    def report_write_errors(self, callback: Callable[[str], None]) -> None:
        """Call `callback(message)` after every failed write (the agent counts and alerts)."""
        self._on_write_error = callback

    def acquire(self) -> None:
        """Take the node-wide lock; raises `StateFileBusyError` if another agent holds it.

        A lock file that cannot be created (read-only directory) is not fatal: the agent
        must still restore GPUs, so it runs, reporting the write error.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            self._failed(f"cannot create lock file {self.lock_path}: {exc}")
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateFileBusyError(
                f"state file {self.path} is locked by another triserve agent on this node "
                f"(flock on {self.lock_path}); only one agent may run per node: stop the "
                "other agent or give this one its own --state-file"
            ) from None
        self._lock_fd = fd

    def release(self) -> None:
        """Drop the node-wide lock (at exit; the kernel also drops it if the process dies)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load(self) -> StaleEntries:
        """What the file on disk lists. Missing: nothing; unreadable: `everything`.

        The read is bounded, so no content can hang or exhaust the start-up restore: the file
        is opened without following a symlink and without blocking (a FIFO or device answers
        at once), must be a regular file (`fstat`) of at most `MAX_STATE_FILE_BYTES`; anything
        else is unreadable, which restores every GPU.
        """
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            return StaleEntries({})
        except OSError as exc:  # ELOOP: a symlink; EACCES, EIO, ...
            return StaleEntries({}, everything=True, reason=f"cannot open {self.path}: {exc}")
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return StaleEntries({}, everything=True, reason="not a regular file")
            if info.st_size > MAX_STATE_FILE_BYTES:
                return StaleEntries(
                    {}, everything=True, reason=f"{info.st_size} bytes, over the cap"
                )
            data = os.read(fd, MAX_STATE_FILE_BYTES + 1)
        except OSError as exc:
            return StaleEntries({}, everything=True, reason=str(exc))
        finally:
            os.close(fd)
        if len(data) > MAX_STATE_FILE_BYTES:  # grew after fstat
            return StaleEntries({}, everything=True, reason="over the size cap")
        try:
            return parse_state(data.decode())
        except UnicodeDecodeError as exc:
            return StaleEntries({}, everything=True, reason=str(exc))

    def mark(
        self, uuid: str, index: int, *, clocks: bool | None = None, power: bool | None = None
    ) -> bool:
        """Record (before the change is made) that clocks and/or power are held on a GPU.

        True when the file on disk now says so too; False when the write failed (the record
        is kept in memory and written again with the next change).
        """
        with self._lock:
            entry = self._held.setdefault(uuid, {"index": index, "clocks": False, "power": False})
            before = dict(entry)
            if clocks is not None:
                entry["clocks"] = clocks
            if power is not None:
                entry["power"] = power
            if not entry["clocks"] and not entry["power"]:
                del self._held[uuid]
            if self._held.get(uuid) != before or self.write_error is not None:
                return self._write()
            return True

    def held(self) -> dict[str, dict[str, Any]]:
        """A copy of what this agent holds now."""
        with self._lock:
            return {k: dict(v) for k, v in self._held.items()}

    def records_of(self, uuid: str, index: int) -> list[str]:
        """The records (by UUID) that may stand for GPU `index` with UUID `uuid`.

        The one "is this GPU held?" check: a record under its UUID, or one whose index is
        `index` (a GPU that did not answer at start-up has a blank UUID).
        """
        with self._lock:
            return [
                u
                for u, entry in self._held.items()
                if (uuid and u == uuid) or entry_index(entry) == index
            ]

    def held_indices(self) -> dict[int, str]:
        """GPU index → UUID of every record that names a usable index."""
        return {
            index: uuid
            for uuid, entry in self.held().items()
            if (index := entry_index(entry)) is not None
        }

    def adopt(self, uuid: str, index: int) -> None:
        """Take over an earlier run's record of a GPU whose restore did not verify yet."""
        self.mark(uuid, index, clocks=True, power=True)

    def keep_absent(self, uuid: str) -> None:
        """Keep an earlier run's record of a GPU not on the node now, by UUID only.

        Its index is dropped (null): later GPUs may have moved down into it, and a record
        must never stand for another GPU. It goes once that GPU's restore verifies.
        """
        with self._lock:
            self._held[uuid] = {"index": None, "clocks": True, "power": True}

    def unplaced(self, known: set[str]) -> list[str]:
        """UUIDs of records that name no index and no GPU in `known` (absent GPUs)."""
        with self._lock:
            return sorted(
                u for u, e in self._held.items() if entry_index(e) is None and u not in known
            )

    def flush(self) -> bool:
        """Write the in-memory record as it stands; False when the write failed."""
        with self._lock:
            return self._write()

    def _failed(self, message: str) -> None:
        self.write_error = message
        self.write_failures += 1
        log.error("state file: %s; keeping the record in memory", message)
        if self._on_write_error is not None:
            self._on_write_error(message)

    def _write(self) -> bool:
        payload = json.dumps({"version": 1, "writtenAt": time.time(), "gpus": self._held})
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".state-", dir=self.path.parent)
        except OSError as exc:
            self._failed(f"cannot write {self.path}: {exc}")
            return False
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self._failed(f"cannot write {self.path}: {exc}")
            return False
        self.write_error = None
        return True


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (a crash right after could otherwise undo it)."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def restore_stale(
    backend: GpuBackend, state: StateFile, count: int | None = None
) -> StartupRestore:
    """Restore every GPU the state file says an earlier run held; verified, one by one.

    Run once at start-up, before any control loop exists (`count`: the device count if
    read). An unreadable file restores every GPU. A GPU whose restore does not verify stays
    recorded (adopted by this run, which keeps retrying it); a GPU that fails does not stop
    the others; a GPU not on the node now keeps its record (`stale_indices`). The file is
    written in every case, which also tells at once whether its directory is writable.
    """
    stale = state.load()
    result = StartupRestore(everything=stale.everything)
    if stale.everything:
        log.warning("state file %s unreadable (%s): restoring every GPU", state.path, stale.reason)
    elif not stale.entries:
        state.flush()
        return result
    indices, uuid_of, result.absent = stale_indices(backend, stale.entries, stale.everything, count)
    for uuid in result.absent:
        state.keep_absent(uuid)
    for index in sorted(indices):
        problem = restore_gpu(backend, index)
        if problem is None:
            result.restored.append(index)
            continue
        result.failed[index] = problem
        log.error("could not restore GPU %d at start-up: %s", index, problem)
        state.adopt(uuid_of.get(index, f"index-{index}"), index)
    state.flush()  # the file now holds exactly what is still unrestored
    return result


@dataclass(frozen=True, slots=True)
class GuardRails:
    """Cluster-wide floors no policy can go under (Helm values, agent flags).

    `min_sm_clock_fraction`: the lowest SM clock a lock may set, as a fraction of the
    device's default boost clock; `min_power_limit_fraction`: the lowest power limit, as a
    fraction of the device's default limit. 0 disables a floor.
    """

    min_sm_clock_fraction: float = 0.0
    min_power_limit_fraction: float = 0.0

    def __post_init__(self) -> None:
        for name in ("min_sm_clock_fraction", "min_power_limit_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag}: {value} is not a fraction in [0, 1]; e.g. 0.5")


class GuardedBackend(DelegatingBackend):
    """A `GpuBackend` whose setters record the GPU in the state file first and obey the rails.

    Only the two setters that leave a GPU changed are guarded; every read and both resets
    go straight to `inner` (`DelegatingBackend`). Which clocks a lock may use (the device's
    supported clocks, the policy's `clockLimits`) is the control loop's clamp
    (`ControlLoop._clamp`, `DeviceLimits`): the guard adds only what the loop cannot know,
    the cluster's `GuardRails`, and keeps power limits inside the device's range, which the
    loop does not check (a strategy's power limit reaches the setter as it chose it).
    """

    def __init__(
        self, inner: GpuBackend, state: StateFile, rails: GuardRails | None = None
    ) -> None:
        """Wrap `inner`; every setter is recorded in `state` before it reaches the device."""
        super().__init__(inner)
        self.state = state
        self.rails = rails if rails is not None else GuardRails()
        self._uuids: dict[int, str] = {}
        #: GPU index → the last lock applied (the clock read-back of a restore compares it).
        self.last_lock_mhz: dict[int, tuple[int, int]] = {}
        #: GPU index → what a guard rail last clamped (the agent reports it as a condition).
        self.clamped: dict[int, str] = {}

    def _uuid(self, index: int) -> str:
        if index not in self._uuids:
            self._uuids[index] = self.inner.identity(index).uuid
        return self._uuids[index]

    def clock_floor_mhz(self, index: int) -> int:
        """The lowest SM clock the guard rail allows (a supported clock; 0: no floor)."""
        fraction = self.rails.min_sm_clock_fraction
        if fraction <= 0:
            return 0
        floor = math.ceil(fraction * self.inner.default_max_sm_clock_mhz(index))
        supported = self.inner.supported_sm_clocks_mhz(index)
        return min((c for c in supported if c >= floor), default=max(supported))

    def _record(self, index: int, **held: bool) -> None:
        if not self.state.mark(self._uuid(index), index, **held):
            raise StateWriteError(
                f"GPU {index}: not changing clocks or power: the state file cannot record it "
                f"({self.state.write_error}); fix the state directory, the GPU stays at defaults"
            )

    def _clamp_note(self, index: int, message: str) -> None:
        if self.clamped.get(index) != message:
            log.warning("GPU %d: %s", index, message)
        self.clamped[index] = message

    def lock_sm_clocks(self, index: int, min_mhz: int, max_mhz: int) -> None:
        """Lock, raised to the guard-rail floor where needed, after recording the lock."""
        floor = self.clock_floor_mhz(index)
        if max_mhz < floor:
            self._clamp_note(
                index,
                f"SM clock {max_mhz} MHz raised to the guard-rail floor {floor} MHz "
                f"({self.rails.min_sm_clock_fraction:g} of boost)",
            )
            min_mhz, max_mhz = max(min_mhz, floor), floor
        self._record(index, clocks=True)
        self.last_lock_mhz[index] = (min(min_mhz, max_mhz), max_mhz)
        self.inner.lock_sm_clocks(index, min(min_mhz, max_mhz), max_mhz)

    def set_power_limit_mw(self, index: int, limit_mw: int) -> None:
        """Set after clamping into the device's constraints and the guard rail, recorded."""
        bounds = self.inner.power_limit_constraints_mw(index)
        clamped = min(max(limit_mw, bounds.min_mw), bounds.max_mw)
        floor_mw = math.ceil(self.rails.min_power_limit_fraction * bounds.default_mw)
        if clamped < floor_mw:
            self._clamp_note(
                index,
                f"power limit {clamped / 1000:g} W raised to the guard-rail floor "
                f"{floor_mw / 1000:g} W ({self.rails.min_power_limit_fraction:g} of default)",
            )
            clamped = min(floor_mw, bounds.max_mw)
        self._record(index, power=True)
        self.inner.set_power_limit_mw(index, clamped)

    def forget_clamps(self) -> None:
        """Start a clean record of guard-rail clamps (a new policy)."""
        self.clamped.clear()

    def restore(self, index: int) -> str | None:
        """Reset clocks and power limit, read back, and drop the record once both verify.

        Returns None when verified, else what is still wrong (never raises GpuError).
        `reset_sm_clocks` and `reset_power_limit` keep the record: controllers reset and
        re-lock many times a minute, and the file only changes when a GPU enters or leaves
        triserve's hands, so the tick does not wait on fsync.
        """
        problem = restore_gpu(self.inner, index, self.last_lock_mhz.get(index))
        if problem is None:
            self.last_lock_mhz.pop(index, None)
            try:
                uuid = self._uuid(index)
            except GpuError:
                uuid = ""  # records by index still go
            for record in self.state.records_of(uuid, index):
                self.state.mark(record, index, clocks=False, power=False)
        return problem


class Watchdog:
    """Calls `on_stall` (once per stall) when `beat()` has not been called for `timeout_s`."""

    def __init__(
        self, timeout_s: float, on_stall: Callable[[float], None], poll_s: float | None = None
    ) -> None:
        """`on_stall` gets the seconds since the last beat; it runs on the watchdog thread."""
        self.timeout_s = timeout_s
        self.on_stall = on_stall
        self.poll_s = poll_s if poll_s is not None else min(timeout_s / 4, 0.5)
        self._last_beat = time.monotonic()
        self._tripped = False
        self.trips = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """The loop is alive (called at the end of every tick)."""
        self._last_beat = time.monotonic()
        self._tripped = False

    def start(self) -> None:
        """Start the watchdog thread (a daemon: it never keeps the process alive)."""
        self._last_beat = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="triserve-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            silent_s = time.monotonic() - self._last_beat
            if silent_s > self.timeout_s and not self._tripped:
                self._tripped = True
                self.trips += 1
                try:
                    self.on_stall(silent_s)
                except Exception:
                    log.exception("watchdog restore failed")
