"""Handing GPUs back: release, verified restore, retries with backoff, shutdown, watchdog.

A GPU that leaves management is restored at once, and the restore counts only once it is
read back (`triserve.node_agent.restore`): until then the GPU is `RestoreFailed` (never
Released) and is retried on later ticks with backoff (`triserve.backoff.Backoff`); when it
verifies, the GPU takes the state its release asked for. At start-up every GPU the state file
lists is restored (once NVML answers the device count), and a GPU that enumerates later is
restored when a record names it (`rescanned`); on shutdown every GPU this agent may hold is
restored, retrying for up to `shutdown_retry_s`; the watchdog thread resets every held GPU
without the agent's lock when ticks stop. Whether a GPU is held is the state file's one check
(`StateFile.records_of`).

`Releases` is owned by `triserve.node_agent.agent.NodeAgent`, which calls it under its lock
(except `on_watchdog`, which runs on the watchdog thread).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from triserve.api.status import GpuState
from triserve.backoff import Backoff
from triserve.gpu.backend import GpuError
from triserve.node_agent.errors import ErrorCounts, ErrorKind
from triserve.node_agent.gpus import GpuRuntime
from triserve.node_agent.inventory import Rescan
from triserve.node_agent.restore import restore_gpu
from triserve.node_agent.safety import GuardedBackend, restore_stale

log = logging.getLogger("triserve.node_agent.agent")

#: Restore retries on the tick: first wait and cap, in seconds of the tick clock.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0
#: Restore retries during shutdown (wall clock: the process is about to exit).
SHUTDOWN_FIRST_S = 0.1
SHUTDOWN_MAX_S = 2.0


class Releases:
    """The release/restore state machine of one node's GPUs."""

    def __init__(
        self,
        backend: GuardedBackend,
        errors: ErrorCounts,
        *,
        shutdown_retry_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Restores through `backend` (which drops a record once its restore verifies)."""
        self.backend = backend
        self.state_file = backend.state
        self.errors = errors
        self.shutdown_retry_s = shutdown_retry_s
        self._sleep = sleep
        #: The last policy whose GPUs are not all verified restored ('' when none).
        self.releasing_policy = ""
        #: GPU index → when to retry a restore that did not verify.
        self.unrestored: dict[int, Backoff] = {}
        #: GPU index → the state it takes once its pending restore verifies.
        self._after_restore: dict[int, tuple[GpuState, str]] = {}

    def startup(self, gpus: Mapping[int, GpuRuntime]) -> list[int]:
        """Restore every GPU the state file says an earlier agent left locked.

        Returns the indices verified at defaults; the others are retried on later ticks.
        """
        result = restore_stale(self.backend.inner, self.state_file, len(gpus))
        if result.restored:
            log.warning(
                "restored default clocks on GPUs %s left locked by an earlier run",
                result.restored,
            )
        for index, problem in result.failed.items():
            gpu = gpus.get(index)
            if gpu is not None:
                self._failed(gpu, 0.0, problem)
        return result.restored

    def rescanned(self, gpus: Mapping[int, GpuRuntime], found: Rescan, now_s: float) -> bool:
        """After `GpuInventory.rescan`: the start-up restore, and restores of returned GPUs.

        The start-up restore runs once the GPUs are found at last; a GPU enumerated later is
        restored (verified) when a record says it may be held. True when the node's GPUs
        changed (found, added, MIG switched): the mapping is due.
        """
        if found.first:
            self.startup(gpus)
        for gpu in found.added:
            if self.state_file.records_of(gpu.identity.uuid, gpu.index):
                self.release(gpu, GpuState.RELEASED, "enumerated again after start-up", now_s)
        return found.first or bool(found.added or found.changed)

    def leaving(self, policy: str) -> None:
        """GPUs are being released from `policy`: report under it until all verify."""
        self.releasing_policy = policy

    def settled(self) -> None:
        """Forget the policy released from once no restore is pending."""
        if not self.unrestored:
            self.releasing_policy = ""

    def release_all(
        self, gpus: Mapping[int, GpuRuntime], policy: str, reason: str, now_s: float
    ) -> None:
        """Release every GPU governed or locked (shutdown), reporting under `policy`."""
        if policy:
            self.leaving(policy)
        for gpu in gpus.values():
            if gpu.governed or gpu.locked:
                self.release(gpu, GpuState.RELEASED, reason, now_s)

    def release(self, gpu: GpuRuntime, state: GpuState, message: str, now_s: float) -> None:
        """Restore the GPU's defaults and stop governing it (errors are counted, not raised).

        The GPU is `state` only once the restore is read back; otherwise `RestoreFailed`.
        """
        try:
            if gpu.loop is not None:
                gpu.loop.release()
        except GpuError as exc:
            self.errors.count(ErrorKind.NVML, f"GPU {gpu.index}: handing clocks back failed: {exc}")
        held = bool(self.state_file.records_of(gpu.identity.uuid, gpu.index))
        gpu.detach(state, message)
        if held or state is GpuState.DEGRADED:
            problem = self.backend.restore(gpu.index)
            if problem is not None:
                self._after_restore[gpu.index] = (state, message)
                self._failed(gpu, now_s, problem)
                return
        log.info("GPU %d released (%s): %s", gpu.index, state.value, message)

    def retry(self, gpus: Mapping[int, GpuRuntime], now_s: float) -> bool:
        """Retry every restore that is due; True when one verified (it may be governed)."""
        verified = False
        for index, backoff in list(self.unrestored.items()):
            if not backoff.due(now_s):
                continue
            gpu = gpus[index]
            problem = self.backend.restore(index)
            if problem is not None:
                self._failed(gpu, now_s, problem)
                continue
            self._restored(gpu, f"after {backoff.attempts + 1} attempts")
            log.warning("GPU %d: %s", index, gpu.message)
            verified = True
        return verified

    def restore_all(self, gpus: Mapping[int, GpuRuntime], reason: str, now_s: float) -> list[int]:
        """Reset every GPU this agent may hold, read back, and retry until verified.

        Retries stop after `shutdown_retry_s`; returns the indices still not at defaults.
        """
        backoff = Backoff(SHUTDOWN_FIRST_S, SHUTDOWN_MAX_S)
        waited_s = 0.0
        failed = self._restore_held(gpus, reason, now_s)
        while failed and waited_s < self.shutdown_retry_s:
            delay_s = min(backoff.failed(0.0), self.shutdown_retry_s - waited_s)
            self._sleep(delay_s)
            waited_s += delay_s
            failed = self._restore_held(gpus, reason, now_s)
        if failed:
            log.error(
                "GPUs %s are still not at defaults after %s; the state file keeps them for the "
                "next agent", sorted(failed), reason,
            )  # fmt: skip
        return sorted(failed)

    def on_watchdog(self, silent_s: float) -> None:
        """Called from the watchdog thread: the tick is stuck, so restore without the lock.

        Records stay in the state file: the stuck tick may still apply a lock it recorded,
        and a record goes only when a restore on the tick thread verifies.
        """
        self.errors.count(ErrorKind.WATCHDOG, f"control tick stalled for {silent_s:.1f} s")
        log.error(
            "control tick stalled for %.1f s: restoring default clocks on every GPU", silent_s
        )
        for index, uuid in self.state_file.held_indices().items():
            problem = restore_gpu(self.backend.inner, index)
            if problem is not None:
                self.errors.count(
                    ErrorKind.RESTORE, f"GPU {index} ({uuid}): watchdog restore: {problem}"
                )

    def _restore_held(self, gpus: Mapping[int, GpuRuntime], reason: str, now_s: float) -> list[int]:
        failed: list[int] = []
        for index, uuid in self.state_file.held_indices().items():
            problem = self.backend.restore(index)
            gpu = gpus.get(index)
            if problem is None:
                if gpu is not None and index in self.unrestored:
                    self._restored(gpu, f"on {reason}")
                continue
            failed.append(index)
            self.errors.count(
                ErrorKind.RESTORE, f"GPU {index} ({uuid}): restore on {reason}: {problem}"
            )
            if gpu is not None:
                self._failed(gpu, now_s, problem)
        return failed

    def _failed(self, gpu: GpuRuntime, now_s: float, problem: str) -> None:
        backoff = self.unrestored.setdefault(gpu.index, Backoff(RETRY_FIRST_S, RETRY_MAX_S))
        backoff.failed(now_s, problem)
        gpu.settle(
            GpuState.RESTORE_FAILED,
            f"restore not verified after {backoff.attempts} attempts ({problem}); "
            f"retrying in {backoff.next_s - now_s:.1f} s",
        )
        self.errors.count(ErrorKind.RESTORE, f"GPU {gpu.index}: {gpu.message}")

    def _restored(self, gpu: GpuRuntime, how: str) -> None:
        """A pending restore verified: the GPU takes the state its release asked for."""
        self.unrestored.pop(gpu.index, None)
        state, why = self._after_restore.pop(gpu.index, (GpuState.RELEASED, "released"))
        gpu.settle(state, f"{why}; restored to defaults {how}")
