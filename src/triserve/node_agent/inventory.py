"""Which GPUs the node has: found at start-up, retried while NVML does not answer, re-read.

`GpuInventory.discover` reads the device count and each GPU's identity once at start-up. When
NVML does not answer the count (a driver hiccup), the agent starts with no GPUs, reports
Degraded (`problem`) and retries with backoff (`triserve.backoff.Backoff`) until it answers;
the start-up restore runs then. Once found, every `rescan_s` (not every tick: NVML calls
cost) `rescan` re-reads the device count and each GPU's identity: a GPU switched to or from
MIG mode is returned in `changed` (the governor releases it to observed), and a GPU that
enumerates after the known ones in `added` (restored if a state-file record names it).
A GPU answering with another UUID at a known index (renumbered) is logged, not re-mapped:
its state-file record keeps it safe until the next start.

Owned by `triserve.node_agent.agent.NodeAgent`, which calls it under its lock from `tick`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from triserve.backoff import Backoff
from triserve.control import ProbeSettings
from triserve.gpu.backend import GpuBackend, GpuError
from triserve.node_agent.errors import ErrorCounts, ErrorKind
from triserve.node_agent.gpus import GpuRuntime, identity_of

log = logging.getLogger("triserve.node_agent.agent")

#: Seconds (tick clock) between re-reads of the device count and the GPUs' MIG modes.
RESCAN_S = 5.0
#: Device-count retries while NVML does not answer: first wait and cap, in seconds.
COUNT_RETRY_FIRST_S = 0.5
COUNT_RETRY_MAX_S = 30.0


@dataclass(slots=True)
class Rescan:
    """What one re-read found: GPUs found at last (`first`), new ones, changed ones."""

    first: bool = False
    added: list[GpuRuntime] = field(default_factory=list)
    changed: list[GpuRuntime] = field(default_factory=list)


class GpuInventory:
    """Finds the node's GPUs and notices when they change."""

    def __init__(
        self,
        backend: GpuBackend,
        errors: ErrorCounts,
        probe: ProbeSettings,
        rescan_s: float = RESCAN_S,
    ) -> None:
        """Reads `backend` (the raw backend: reads only); failures are counted in `errors`."""
        self.backend = backend
        self.errors = errors
        self.probe = probe
        self.rescan_s = rescan_s
        #: True once the device count answered.
        self.found = False
        #: Why the node's GPUs are not known yet (None once found): the report's Degraded.
        self.problem: str | None = None
        self._retry = Backoff(COUNT_RETRY_FIRST_S, COUNT_RETRY_MAX_S)
        self._next_rescan_s = 0.0

    def discover(self, now_s: float) -> dict[int, GpuRuntime]:
        """Every GPU by index, or {} while the device count fails (retried when `due`)."""
        try:
            count = self.backend.device_count()
        except GpuError as exc:
            delay_s = self._retry.failed(now_s, str(exc))
            self.problem = (
                f"NVML did not answer the device count ({exc}); no GPU can be restored or "
                f"governed until it does: retrying in {delay_s:.1f} s (attempt "
                f"{self._retry.attempts}); check the NVIDIA driver (nvidia-smi) on this node"
            )
            self.errors.count(ErrorKind.NVML, self.problem)
            return {}
        if self._retry.attempts:
            log.warning("NVML answered the device count after %d failures", self._retry.attempts)
        self.found, self.problem = True, None
        self._retry.succeeded()
        self._next_rescan_s = now_s + self.rescan_s
        return {
            i: GpuRuntime(identity=identity_of(self.backend, i), probe=self.probe)
            for i in range(count)
        }

    def due(self, now_s: float) -> bool:
        """True when a device-count retry or a periodic re-read is due."""
        return now_s >= self._next_rescan_s if self.found else self._retry.due(now_s)

    def rescan(self, gpus: dict[int, GpuRuntime], now_s: float) -> Rescan:
        """Find the GPUs at last, or re-read them; adds new GPUs to `gpus`."""
        if not self.found:
            gpus.update(self.discover(now_s))
            return Rescan(first=self.found)
        self._next_rescan_s = now_s + self.rescan_s
        try:
            count = self.backend.device_count()
        except GpuError as exc:
            self.errors.count(ErrorKind.NVML, f"re-reading the device count: {exc}")
            return Rescan()
        found = Rescan()
        for gpu in gpus.values():
            try:
                identity = self.backend.identity(gpu.index)
            except GpuError:
                continue  # a GPU that stops answering is the tick's to count and degrade
            if gpu.identity.uuid and identity.uuid != gpu.identity.uuid:
                self.errors.count(
                    ErrorKind.NVML,
                    f"GPU {gpu.index} now answers as {identity.uuid}, not {gpu.identity.uuid}: "
                    "GPUs were renumbered; restart the agent to map them again",
                )
            elif identity.mig_enabled != gpu.identity.mig_enabled:
                log.warning("GPU %d: MIG mode now %s", gpu.index, identity.mig_enabled)
                gpu.reidentify(identity)
                found.changed.append(gpu)
        for index in range(max(gpus, default=-1) + 1, count):
            gpu = GpuRuntime(identity=identity_of(self.backend, index), probe=self.probe)
            log.warning("GPU %d (%s) enumerated after start-up", index, gpu.identity.uuid)
            gpus[index] = gpu
            found.added.append(gpu)
        return found
