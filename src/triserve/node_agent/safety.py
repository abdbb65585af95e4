"""Keep GPUs safe whatever happens to the agent: the state file, checked setters, a watchdog.

- `StateFile`: JSON on a hostPath (default ``/var/lib/triserve/state.json``) naming every GPU
  on which triserve may hold a clock lock or a changed power limit. It is written atomically
  (temp file + rename + fsync) *before* a lock is applied, so after a crash, OOM kill or node
  reboot the next agent knows what to restore (`restore_stale`) even though locks are not
  persistent across a driver reload.
- `GuardedBackend`: wraps the real `GpuBackend`; records to the state file before any setter
  and refuses clocks outside the device's supported range or the policy's limits, whatever
  the controller asks for.
- `Watchdog`: a thread that resets every GPU to defaults if the control tick stalls.

Used by `triserve.node_agent.agent.NodeAgent`; nothing here knows about Kubernetes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from triserve.gpu.backend import (
    Activity,
    ClockEventReason,
    GpuBackend,
    GpuError,
    GpuIdentity,
    GpuInvalidArgumentError,
    GpuSample,
    PowerLimitConstraints,
    ThermalThresholds,
)

log = logging.getLogger(__name__)

DEFAULT_STATE_FILE = Path("/var/lib/triserve/state.json")


class StateFile:
    """Which GPUs (by UUID) triserve may have changed; survives agent crashes."""

    def __init__(self, path: Path) -> None:
        """`path` need not exist; its directory is created on first write."""
        self.path = path
        self._lock = threading.Lock()
        self._held: dict[str, dict[str, Any]] = {}

    def load(self) -> dict[str, dict[str, Any]]:
        """Entries from the file: UUID → {index, clocks, power}. A corrupt file reads empty."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("state file %s unreadable (%s); restoring every GPU", self.path, exc)
            return {"*": {"corrupt": True}}
        gpus = data.get("gpus") if isinstance(data, dict) else None
        return {str(k): dict(v) for k, v in gpus.items()} if isinstance(gpus, dict) else {}

    def mark(
        self, uuid: str, index: int, *, clocks: bool | None = None, power: bool | None = None
    ) -> None:
        """Record (before the change is made) that clocks and/or power are held on a GPU."""
        with self._lock:
            entry = self._held.setdefault(uuid, {"index": index, "clocks": False, "power": False})
            before = dict(entry)
            if clocks is not None:
                entry["clocks"] = clocks
            if power is not None:
                entry["power"] = power
            if not entry["clocks"] and not entry["power"]:
                del self._held[uuid]
            if self._held.get(uuid) != before:
                self._write()

    def held(self) -> dict[str, dict[str, Any]]:
        """A copy of what this agent holds now."""
        with self._lock:
            return {k: dict(v) for k, v in self._held.items()}

    def clear(self) -> None:
        """Record that nothing is held (after every GPU was restored)."""
        with self._lock:
            self._held.clear()
            self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"version": 1, "writtenAt": time.time(), "gpus": self._held})
        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def restore_stale(backend: GpuBackend, state: StateFile) -> list[int]:
    """Reset clocks and power limits of every GPU the state file says was held; the indices.

    Run once at start-up, before any control loop exists. A corrupt state file restores
    every GPU (the safe reading of "we do not know").
    """
    entries = state.load()
    restored: list[int] = []
    if not entries:
        return restored
    by_uuid = {backend.identity(i).uuid: i for i in range(backend.device_count())}
    indices = set(by_uuid.values()) if "*" in entries else set()
    for uuid, entry in entries.items():
        if uuid in by_uuid:
            indices.add(by_uuid[uuid])
        elif isinstance(entry.get("index"), int) and entry["index"] < backend.device_count():
            indices.add(int(entry["index"]))
    for index in sorted(indices):
        try:
            reset_gpu(backend, index)
            restored.append(index)
        except GpuError as exc:
            log.error("could not restore GPU %d at start-up: %s", index, exc)
    state.clear()
    return restored


def reset_gpu(backend: GpuBackend, index: int) -> None:
    """Hand the clock back to the PMU and the power limit back to its default."""
    backend.reset_sm_clocks(index)
    backend.reset_power_limit(index)


class GuardedBackend:
    """A `GpuBackend` that checks every setter and records it in the state file first."""

    def __init__(self, inner: GpuBackend, state: StateFile) -> None:
        """Wrap `inner`; clock limits start at the device's own (see `set_clock_limits`)."""
        self.inner = inner
        self.state = state
        self._limits_mhz: tuple[int, int] = (0, 0)
        self._uuids: dict[int, str] = {}
        #: Activity from dcgm-exporter per GPU index, used when the device reports none itself.
        self.fallback_activity: dict[int, Activity] = {}

    def set_clock_limits(self, min_mhz: int, max_mhz: int) -> None:
        """The policy's `clockLimits` (0 = device limit) every lock must respect."""
        self._limits_mhz = (min_mhz, max_mhz)

    def _uuid(self, index: int) -> str:
        if index not in self._uuids:
            self._uuids[index] = self.inner.identity(index).uuid
        return self._uuids[index]

    def _allowed_range(self, index: int) -> tuple[int, int]:
        supported = self.inner.supported_sm_clocks_mhz(index)
        lo, hi = min(supported), max(supported)
        pmin, pmax = self._limits_mhz
        return max(lo, pmin or lo), min(hi, pmax or hi)

    def lock_sm_clocks(self, index: int, min_mhz: int, max_mhz: int) -> None:
        """Lock after clamping into the allowed range and recording the lock."""
        lo, hi = self._allowed_range(index)
        if lo > hi:
            raise GpuInvalidArgumentError(f"GPU {index}: policy clock limits exclude every clock")
        new_min, new_max = min(max(min_mhz, lo), hi), min(max(max_mhz, lo), hi)
        if (new_min, new_max) != (min_mhz, max_mhz):
            log.warning(
                "GPU %d: lock [%d, %d] MHz outside allowed [%d, %d]; clamped",
                index, min_mhz, max_mhz, lo, hi,
            )  # fmt: skip
        self.state.mark(self._uuid(index), index, clocks=True)
        self.inner.lock_sm_clocks(index, min(new_min, new_max), new_max)

    def reset_sm_clocks(self, index: int) -> None:
        """Reset the clock lock (the state file keeps the GPU until `restore`)."""
        self.inner.reset_sm_clocks(index)

    def set_power_limit_mw(self, index: int, limit_mw: int) -> None:
        """Set after clamping into the device's constraints and recording the change."""
        bounds = self.inner.power_limit_constraints_mw(index)
        clamped = min(max(limit_mw, bounds.min_mw), bounds.max_mw)
        self.state.mark(self._uuid(index), index, power=True)
        self.inner.set_power_limit_mw(index, clamped)

    def reset_power_limit(self, index: int) -> None:
        """Reset the power limit (the state file keeps the GPU until `restore`)."""
        self.inner.reset_power_limit(index)

    def restore(self, index: int) -> None:
        """Reset clocks and power limit, then drop the GPU from the state file.

        Controllers reset and re-lock many times a minute; the file only changes when a GPU
        enters or leaves triserve's hands, so the tick does not wait on fsync.
        """
        reset_gpu(self.inner, index)
        self.state.mark(self._uuid(index), index, clocks=False, power=False)

    # Reads pass straight through.
    def device_count(self) -> int:
        """Number of GPUs."""
        return self.inner.device_count()

    def identity(self, index: int) -> GpuIdentity:
        """Identity of GPU `index`."""
        return self.inner.identity(index)

    def supported_sm_clocks_mhz(self, index: int) -> tuple[int, ...]:
        """Supported SM clocks, MHz."""
        return self.inner.supported_sm_clocks_mhz(index)

    def default_max_sm_clock_mhz(self, index: int) -> int:
        """Default boost clock, MHz."""
        return self.inner.default_max_sm_clock_mhz(index)

    def sm_clock_mhz(self, index: int) -> int:
        """Current SM clock, MHz."""
        return self.inner.sm_clock_mhz(index)

    def mem_clock_mhz(self, index: int) -> int:
        """Current memory clock, MHz."""
        return self.inner.mem_clock_mhz(index)

    def locked_sm_clocks_mhz(self, index: int) -> tuple[int, int] | None:
        """The lock in force, if any."""
        return self.inner.locked_sm_clocks_mhz(index)

    def power_limit_constraints_mw(self, index: int) -> PowerLimitConstraints:
        """Power-limit range, mW."""
        return self.inner.power_limit_constraints_mw(index)

    def power_limit_mw(self, index: int) -> int:
        """Enforced power limit, mW."""
        return self.inner.power_limit_mw(index)

    def power_usage_mw(self, index: int) -> int:
        """Board power, mW."""
        return self.inner.power_usage_mw(index)

    def total_energy_mj(self, index: int) -> int:
        """Energy counter, mJ."""
        return self.inner.total_energy_mj(index)

    def temperature_c(self, index: int) -> float:
        """GPU temperature, °C."""
        return self.inner.temperature_c(index)

    def thermal_thresholds_c(self, index: int) -> ThermalThresholds:
        """Thermal thresholds, °C."""
        return self.inner.thermal_thresholds_c(index)

    def clock_event_reasons(self, index: int) -> ClockEventReason:
        """Clock event reasons."""
        return self.inner.clock_event_reasons(index)

    def utilization_gpu_pct(self, index: int) -> float:
        """Utilisation, percent."""
        return self.inner.utilization_gpu_pct(index)

    def activity(self, index: int) -> Activity | None:
        """Profiling activity, if any."""
        return self.inner.activity(index)

    def sample(self, index: int) -> GpuSample:
        """One batched sample, with dcgm-exporter activity filled in where the device has none."""
        sample = self.inner.sample(index)
        if sample.activity is None and index in self.fallback_activity:
            return replace(sample, activity=self.fallback_activity[index])
        return sample


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
