"""Decisions, reasons and the strategy protocol every controller implements.

A strategy (Tri-serve, a baseline, the bench's oracle) is a small typed state machine that
turns one `TickContext` — the GPU sample of this tick, the latest serving observations and
what `triserve.control.signals` derived from them — into one `Decision`. `ControlLoop`
(`triserve.control.loop`) owns the strategies, calls `decide` once per tick and actuates.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from triserve.gpu.backend import GpuBackend, GpuSample, ThermalThresholds
from triserve.telemetry import StageObservation

if TYPE_CHECKING:
    from triserve.control.slotargets import SloReadout


class Reason(enum.StrEnum):
    """Why a decision chose its clock; the `reason` label of `triserve_gpu_decisions_total`."""

    STALL = "stall"
    RIDGE = "ridge"
    COMPUTE = "compute"
    THERMAL = "thermal"
    SLO_GUARD = "slo-guard"
    PIPELINE = "pipeline"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class Decision:
    """What one tick decided for one GPU.

    `target_sm_clock_mhz` is the SM clock ceiling to lock (None = hand the clock back to the
    PMU); `power_limit_mw` is a power limit to enforce (None = the device default);
    `source` names what decided an A (ridge) clock — ``profile``, ``search``, ``counters``
    or ``phase`` — and is empty otherwise; `guard_tripped` is True on the tick the latency
    guard tripped; `slo` is the SLO-target controller's latest readout (mode Targets only);
    `bound_unheld` is True while control cannot keep the latency bound or targets on this
    GPU (it runs at the PMU default).
    """

    target_sm_clock_mhz: int | None
    reason: Reason
    message: str
    power_limit_mw: int | None = None
    source: str = ""
    guard_tripped: bool = False
    slo: SloReadout | None = None
    bound_unheld: bool = False


@dataclass(frozen=True, slots=True)
class DeviceLimits:
    """The clock and thermal envelope a strategy may use on one GPU.

    `clocks_mhz` holds the device's supported SM clocks already cut to the policy's clock
    limits, ascending; `default_max_mhz` is the PMU's boost clock (within the limits).
    """

    clocks_mhz: tuple[int, ...]
    default_max_mhz: int
    thresholds: ThermalThresholds
    power_default_mw: int
    power_min_mw: int
    power_max_mw: int
    policy_limited: bool

    @property
    def min_mhz(self) -> int:
        """Lowest clock a strategy may choose."""
        return self.clocks_mhz[0]

    @property
    def max_mhz(self) -> int:
        """Highest clock a strategy may choose."""
        return self.clocks_mhz[-1]

    def snap_up(self, clock_mhz: float) -> int:
        """The lowest allowed clock at or above `clock_mhz` (the top clock if none is)."""
        i = bisect.bisect_left(self.clocks_mhz, clock_mhz - 1e-6)
        return self.clocks_mhz[min(i, len(self.clocks_mhz) - 1)]

    def snap_down(self, clock_mhz: float) -> int:
        """The highest allowed clock at or below `clock_mhz` (the bottom clock if none is)."""
        i = bisect.bisect_right(self.clocks_mhz, clock_mhz + 1e-6)
        return self.clocks_mhz[max(i - 1, 0)]

    def step(self, clock_mhz: int, steps: int) -> int:
        """The allowed clock `steps` supported values above (or below, if negative) a clock."""
        i = bisect.bisect_left(self.clocks_mhz, clock_mhz)
        j = min(max(i + steps, 0), len(self.clocks_mhz) - 1)
        return self.clocks_mhz[j]

    @classmethod
    def from_backend(
        cls, backend: GpuBackend, index: int, min_mhz: int = 0, max_mhz: int = 0
    ) -> DeviceLimits:
        """Read the envelope of GPU `index`, cut to a policy's limits (0 = device limit).

        Raises ValueError when the policy's range holds no supported clock.
        """
        supported = tuple(sorted(backend.supported_sm_clocks_mhz(index)))
        lo = min_mhz if min_mhz > 0 else supported[0]
        hi = max_mhz if max_mhz > 0 else supported[-1]
        clocks = tuple(c for c in supported if lo <= c <= hi)
        if not clocks:
            raise ValueError(
                f"clockLimits [{min_mhz}, {max_mhz}] MHz hold no clock GPU {index} supports "
                f"({supported[0]}-{supported[-1]} MHz); widen spec.clockLimits"
            )
        default_max = min(backend.default_max_sm_clock_mhz(index), clocks[-1])
        power = backend.power_limit_constraints_mw(index)
        return cls(
            clocks_mhz=clocks,
            default_max_mhz=max(default_max, clocks[0]),
            thresholds=backend.thermal_thresholds_c(index),
            power_default_mw=power.default_mw,
            power_min_mw=power.min_mw,
            power_max_mw=power.max_mw,
            policy_limited=(clocks[0] != supported[0] or clocks[-1] != supported[-1]),
        )


@dataclass(frozen=True, slots=True)
class StageSignals:
    """What the serving observations say about one GPU this tick (see `signals`).

    `busy` is True when any stage on the GPU has running or waiting requests, or the GPU is
    running kernels; `stalled` when the GPU is idle and every stage waits on upstream work;
    `upstream_active` when an upstream stage is working (its output will arrive);
    `prefill_share` is the share of prompt tokens among tokens processed over the last scrape
    window (None when unknown); `running` the running requests summed over the GPU's stages.
    """

    busy: bool
    stalled: bool
    upstream_active: bool
    work_imminent: bool
    prefill_share: float | None
    running: int


@dataclass(frozen=True, slots=True)
class TickContext:
    """Everything a strategy may look at for one tick of one GPU."""

    now_s: float
    dt_s: float
    sample: GpuSample
    stages: Sequence[StageObservation]
    signals: StageSignals
    limits: DeviceLimits
    #: True when the period since the previous tick ran at the PMU default (no lock).
    at_default: bool = True


class Strategy(Protocol):
    """A clock-control policy for one GPU; `decide` is called once per control tick."""

    name: str

    def decide(self, ctx: TickContext) -> Decision:
        """Choose the clock (and optionally power limit) for this tick."""
        ...
