"""Verified restore: reset a GPU, read it back, and retry with backoff until it matches.

A reset call that returns is not yet a restored GPU: NVML calls time out, a lost GPU
answers nothing, the power-limit setter wrapper in nvidia-ml-py ignores its return code, and
a clock reset can return success and change nothing. So every restore here is *reset, then
read back*: no lock in force (`locked_sm_clocks_mhz` is None) and the enforced power limit
equal to the device default. The power half is a true read of the enforced limit. NVML has
no getter for a locked SM clock range (a backend says so with ``reads_locks = False``), so
on NVML the clock half is cross-checked with what NVML can read (`clock_read_back`): the
clock event reasons must not report a clock setting (bit 0x2), and the SM clock must be
above the lock, or at the boost clock when the lock is not known. A GPU idle or held by a
power or thermal limit cannot show that: its restore is *unverified*, never verified, and is
retried like a failure until the GPU is busy enough to show it (docs/restore.md).

- `restore_gpu(backend, index, lock_mhz)` — one attempt; None when verified, else what is
  still wrong or unverified.
- `restore_stale(backend, state)` — at start-up, restore every GPU the state file lists
  (everything when the file is unreadable); each GPU on its own, a lost one does not stop
  the others, and only verified GPUs leave the file. A record of a GPU that is not on the
  node now (absent from enumeration) is kept, and the node reports it (`stale_indices`).

Used by `triserve.node_agent.safety.GuardedBackend` and `triserve.node_agent.releases`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from triserve.gpu.backend import ClockEventReason, GpuBackend, GpuError

log = logging.getLogger(__name__)

#: Utilization from which a GPU free of limiting clock event reasons runs at its boost clock.
BUSY_PCT = 10.0
#: Clock event reasons under which a low SM clock says nothing about a lock.
_LIMITED = (
    ClockEventReason.GPU_IDLE
    | ClockEventReason.SW_POWER_CAP
    | ClockEventReason.HW_SLOWDOWN
    | ClockEventReason.SYNC_BOOST
    | ClockEventReason.SW_THERMAL
    | ClockEventReason.HW_THERMAL
    | ClockEventReason.HW_POWER_BRAKE
)


def clock_read_back(
    backend: GpuBackend, index: int, lock_mhz: tuple[int, int] | None
) -> str | None:
    """What NVML's reads say about a clock lock after its reset: None when they show it gone.

    `lock_mhz` is the last lock applied (None: unknown, e.g. an earlier agent's). Raises
    GpuError when a read fails.
    """
    reasons = backend.clock_event_reasons(index)
    if reasons & ClockEventReason.APPLICATIONS_CLOCKS:
        return (
            "clock event reasons still report a clock setting holding the SM clock "
            "(0x2, nvmlClocksEventReasonApplicationsClocksSetting)"
        )
    boost_mhz = backend.default_max_sm_clock_mhz(index)
    ceiling_mhz = lock_mhz[1] if lock_mhz is not None else boost_mhz - 1
    if ceiling_mhz >= boost_mhz:
        return None  # a lock reaching the boost clock holds nothing back
    clock_mhz = backend.sm_clock_mhz(index)
    if clock_mhz > ceiling_mhz:
        return None
    what = f"the lock at up to {ceiling_mhz} MHz" if lock_mhz else "a lock below the boost clock"
    busy_pct = backend.utilization_gpu_pct(index)
    if busy_pct >= BUSY_PCT and not reasons & _LIMITED:
        return (
            f"SM clock reads {clock_mhz} MHz under load ({busy_pct:g} % busy, no power or "
            f"thermal reason): {what} still holds"
        )
    why = "idle" if busy_pct < BUSY_PCT or reasons & ClockEventReason.GPU_IDLE else "limited"
    return (
        f"unverified: the GPU is {why} at {clock_mhz} MHz, so its clock cannot show that {what} "
        "is gone (NVML cannot read locked clocks back); retried until it is busy"
    )


def restore_gpu(
    backend: GpuBackend, index: int, lock_mhz: tuple[int, int] | None = None
) -> str | None:
    """Reset clocks and power limit of GPU `index` and read both back.

    Both resets are tried even when the first fails. `lock_mhz`: the last lock applied, for
    `clock_read_back` on backends that cannot read locks. Returns None when the read-back
    shows the defaults, otherwise a sentence naming what is still wrong or unverified (never
    raises GpuError).
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
        elif not problems and not backend.reads_locks:
            clocks = clock_read_back(backend, index, lock_mhz)
            if clocks is not None:
                problems.append(clocks)
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
    #: UUIDs the file names that are not on the node now: their records are kept.
    absent: list[str] = field(default_factory=list)


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
    backend: GpuBackend,
    entries: dict[str, dict[str, object]],
    everything: bool,
    count: int | None = None,
) -> tuple[set[int], dict[int, str], list[str]]:
    """Which GPU indices the file's entries name, each one's UUID where known, and the absent.

    An entry whose UUID no GPU answers with is placed by its index only when the GPU there
    did not answer (it may be that one). Otherwise a GPU UUID (``GPU-…``) is *absent*: not
    enumerated now (driver hiccup, GPU reset), and later GPUs may have moved down an index;
    its record must outlive this start, and every GPU is restored. `count`: the device count
    if already read.
    """
    count = backend.device_count() if count is None else count
    by_uuid = _uuids(backend, count)
    uuid_of = {i: u for u, i in by_uuid.items()}
    if everything:
        return set(range(count)), uuid_of, []
    answered = set(by_uuid.values())
    indices: set[int] = set()
    absent: list[str] = []
    unplaced = False
    for uuid, entry in entries.items():
        if uuid in by_uuid:
            indices.add(by_uuid[uuid])
            continue
        index = entry_index(entry, count)
        if index is not None and index not in answered:
            indices.add(index)
            uuid_of.setdefault(index, uuid)
            continue
        if uuid.startswith("GPU-"):
            absent.append(uuid)
        unplaced = True
    if unplaced:
        # A GPU we cannot place: restoring every GPU is the safe reading.
        log.warning(
            "state file names GPUs not on this node now (%s): restoring every GPU, keeping "
            "their records until they are seen again", ", ".join(absent) or "unknown ids",
        )  # fmt: skip
        return set(range(count)), uuid_of, absent
    return indices, uuid_of, absent
