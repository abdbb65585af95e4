"""Verified restore: reset a GPU, read it back, and retry with backoff until it matches.

A reset call that returns is not yet a restored GPU: NVML calls time out, a lost GPU
answers nothing, and the power-limit setter wrapper in nvidia-ml-py ignores its return
code. So every restore here is *reset, then read back*: no lock in force
(`locked_sm_clocks_mhz` is None) and the enforced power limit equal to the device default.
NVML has no getter for a locked SM clock range, so on real GPUs the clock half of the
read-back is "the reset call returned success" (`NvmlBackend` forgets a lock only then);
the power half is a true read of the enforced limit.

- `restore_gpu(backend, index)` — one attempt; None when verified, else what is still wrong.
- `restore_stale(backend, state)` — at start-up, restore every GPU the state file lists
  (everything when the file is unreadable); each GPU on its own, a lost one does not stop
  the others, and only verified GPUs leave the file.

Used by `triserve.node_agent.safety.GuardedBackend` and `triserve.node_agent.agent.NodeAgent`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from triserve.gpu.backend import GpuBackend, GpuError

log = logging.getLogger(__name__)


def restore_gpu(backend: GpuBackend, index: int) -> str | None:
    """Reset clocks and power limit of GPU `index` and read both back.

    Both resets are tried even when the first fails. Returns None when the read-back shows
    the defaults, otherwise a sentence naming what is still wrong (never raises GpuError).
    """
    problems: list[str] = []
    for what, reset in (
        ("clock reset", backend.reset_sm_clocks),
        ("power-limit reset", backend.reset_power_limit),
    ):
        try:
            reset(index)
        except GpuError as exc:
            problems.append(f"{what} failed: {type(exc).__name__}: {exc}")
    try:
        lock = backend.locked_sm_clocks_mhz(index)
        if lock is not None:
            problems.append(f"SM clocks still locked at {lock[0]}-{lock[1]} MHz")
        limit_mw = backend.power_limit_mw(index)
        default_mw = backend.power_limit_constraints_mw(index).default_mw
        if limit_mw != default_mw:
            problems.append(
                f"power limit reads {limit_mw / 1000:g} W, default is {default_mw / 1000:g} W"
            )
    except GpuError as exc:
        problems.append(f"read-back failed: {type(exc).__name__}: {exc}")
    return "; ".join(problems) if problems else None


@dataclass(slots=True)
class StartupRestore:
    """What the start-up restore did: GPUs verified at defaults, and those still failing."""

    restored: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    everything: bool = False


def entry_index(entry: dict[str, object], count: int | None = None) -> int | None:
    """The GPU index a state-file entry names, or None when it names none we can use.

    The one index check for records: an int (not a bool), not negative, and below `count`
    when the device count is known.
    """
    index = entry.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        return None
    if count is not None and index >= count:
        return None
    return index


def _uuids(backend: GpuBackend, count: int) -> dict[str, int]:
    found: dict[str, int] = {}
    for i in range(count):
        try:
            found[backend.identity(i).uuid] = i
        except GpuError as exc:
            # A lost GPU still gets its reset attempt below, by index.
            log.error("GPU %d: cannot read its identity at start-up: %s", i, exc)
    return found


def stale_indices(
    backend: GpuBackend, entries: dict[str, dict[str, object]], everything: bool
) -> tuple[set[int], dict[int, str]]:
    """Which GPU indices the file's entries name, and each one's UUID where known."""
    count = backend.device_count()
    by_uuid = _uuids(backend, count)
    uuid_of = {i: u for u, i in by_uuid.items()}
    if everything:
        return set(range(count)), uuid_of
    indices: set[int] = set()
    for uuid, entry in entries.items():
        if uuid in by_uuid:
            indices.add(by_uuid[uuid])
            continue
        index = entry_index(entry, count)
        if index is not None:
            indices.add(index)
            uuid_of.setdefault(index, uuid)
        else:
            # A GPU we cannot place: restoring every GPU is the safe reading.
            log.warning("state file names GPU %s, not on this node: restoring every GPU", uuid)
            return set(range(count)), uuid_of
    return indices, uuid_of
