"""Power budget allocation: share a policy's watts across its GPUs where they buy most tokens.

Pure: no kopf, no client. The budget timer in `handlers.py` calls `BudgetKeeper.rebalance`
every few seconds with what the agents last reported (`GpuInput`, built from the
NodeEnergyReports) and the caps now written on the Nodes; the cluster bench
(`triserve.bench.cluster`) calls the same code with simulated agents.

Each GPU's throughput is modelled from its own report windows (`OperatingPoint`: mean power,
tokens/s, the cap then, how long it was held at it and how long it was busy) as
`tokens/s = a·(P - p0)^e` up to the power it draws when nothing holds it (its demand), flat
above; `p0` (`STATIC_SHARE` of the minimum limit) is the power that buys no work.
A window counts as cap-bound only when the GPU was both held at its cap and busy nearly all
of it; a GPU that idles between requests gets its last power plus some headroom as demand.
The elasticity `e` is measured from two cap-bound windows at clearly different caps, else
`PRIOR_ELASTICITY`; `a`
anchors the curve on the newest window. Allocation is water-filling on the marginal tokens
per watt `a·e·(P - p0)^(e-1)`: every GPU starts at its minimum power limit, and one common marginal
value (found by bisection) decides how far above it each GPU's cap goes; watts no GPU can use
are then spread up to the maximum limits, so a load that rises between two re-balances has
room. Invariants (property-tested in tests/unit/operator/test_budget.py):

* the caps add up to at most the usable budget, `watts * (1 - marginPercent/100)`, whenever
  the GPUs' minimum limits fit in it;
* a node that stops reporting keeps its last caps, counted against the budget;
* a GPU seen for the first time starts at its minimum power limit (its agent applies that
  floor itself until the operator's cap arrives);
* a lowered cap is written at once; a raised cap is funded only by watts that no GPU may
  still be drawing: a GPU lowered less than `settle_s` ago counts at its old cap until then,
  so the caps in force never add up to more than the budget while agents catch up.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

#: The elasticity of tokens/s in the power above `p0`, used until a GPU's own windows
#: measure it. The simulator's H100 and A100 show 0.45-0.7 for compute-bound prefill across
#: their limit ranges (lower near the default limit, higher near the minimum); 0.6 did better
#: than 0.8 in `triserve bench-cluster` (docs/power-budget.md). Measured values replace it.
PRIOR_ELASTICITY = 0.6
#: The power that buys no work, as a share of the minimum power limit: the datasheet idle
#: powers of the H100 (75 W of a 200 W minimum), A100 and L40S sit near half of it.
STATIC_SHARE = 0.5
#: Bounds on a measured elasticity (concave, never flat: noise must not zero a GPU's share).
MIN_ELASTICITY = 0.05
MAX_ELASTICITY = 1.0
#: A window held at its cap for at least this share of its length counts as cap-bound.
BOUND_SHARE = 0.05
#: A window busy for at least this share of its length had more work than it could run.
SATURATED_SHARE = 0.9
#: Headroom above the power an unbound GPU drew, before its marginal value drops to 0.
DEMAND_HEADROOM = 1.15
#: Two windows whose power differs by less than this ratio cannot measure an elasticity.
MIN_POWER_RATIO = 1.05
#: Windows generating fewer tokens per second than this cannot measure an elasticity.
MIN_TOKENS_PER_S = 1e-3
#: The water level is found once the caps it gives fall short of the budget by less than this.
SPEND_TOLERANCE_W = 0.5
#: Caps move in steps of this many watts above the minimum limit, so that fit noise does not
#: rewrite every Node's annotation on every re-balance.
CAP_STEP_W = 5

GpuKey = tuple[str, str]  # (node, GPU UUID)


@dataclasses.dataclass(frozen=True, slots=True)
class Window:
    """One report window of a GPU (`triserve.api.status.OperatingPoint`)."""

    watts: float
    tokens_per_second: float
    cap_watts: float = 0.0
    capped_share: float = 0.0  #: capped seconds over the window's seconds
    busy_share: float = 1.0  #: busy seconds over the window's seconds (1: not reported)

    @property
    def bound(self) -> bool:
        """True when the cap, not the load, set the window's tokens/s.

        The cap held the GPU for a real share of the window and the GPU had work nearly all
        of it: a GPU that idles between requests serves its load whatever its cap.
        """
        return (
            self.cap_watts > 0
            and self.capped_share >= BOUND_SHARE
            and self.busy_share >= SATURATED_SHARE
        )


@dataclasses.dataclass(frozen=True, slots=True)
class GpuInput:
    """What the allocation knows of one GPU: its limits and its recent windows, oldest first."""

    node: str
    uuid: str
    min_w: float
    max_w: float
    windows: tuple[Window, ...] = ()

    @property
    def key(self) -> GpuKey:
        """(node, UUID): how caps are keyed."""
        return (self.node, self.uuid)


@dataclasses.dataclass(frozen=True, slots=True)
class Curve:
    """A GPU's fitted throughput model: tokens/s = a·(P - p0)^e for P up to `demand_w`.

    `p0` is the power that buys no work (static power and leakage): the clock, and with it
    the rate, grows with the power above it, which is why a GPU held near its minimum limit
    gains much from a few more watts.
    """

    a: float
    e: float
    demand_w: float
    p0_w: float = 0.0

    def tokens_per_second(self, watts: float) -> float:
        """Modelled generation rate at a cap of `watts`."""
        above = min(watts, self.demand_w) - self.p0_w
        return self.a * above**self.e if above > 0 else 0.0

    def marginal(self, watts: float) -> float:
        """Modelled extra tokens/s per extra watt at a cap of `watts`."""
        above = max(watts - self.p0_w, 1.0)
        return self.a * self.e * above ** (self.e - 1.0) if watts < self.demand_w else 0.0

    def cap_at(self, level: float, low_w: float, high_w: float) -> float:
        """The cap whose marginal tokens per watt equals `level`, within [low_w, high_w]."""
        top = min(high_w, max(self.demand_w, low_w))
        if self.a <= 0 or level <= 0:
            return top if level <= 0 else low_w
        if self.e >= 1.0:
            return top if self.a > level else low_w
        if top <= self.p0_w:
            return top
        ratio = self.a * self.e / level
        if ratio <= 0.0:
            return low_w  # a tiny (subnormal) fit underflows: no marginal throughput at all
        if not math.isfinite(ratio):
            return top
        # In logs: an elasticity near 1 would overflow the power.
        log_above = math.log(ratio) / (1.0 - self.e)
        if log_above >= math.log(top - self.p0_w):
            return top
        return max(self.p0_w + math.exp(log_above), low_w)


def fit(gpu: GpuInput) -> Curve:
    """The throughput model of `gpu` from its windows (no windows: no tokens, no demand)."""
    p0_w = STATIC_SHARE * gpu.min_w
    windows = [w for w in gpu.windows if w.watts > p0_w]
    if not windows:
        return Curve(0.0, PRIOR_ELASTICITY, gpu.min_w, p0_w)
    newest = windows[-1]
    demand_w = gpu.max_w if newest.bound else min(gpu.max_w, newest.watts * DEMAND_HEADROOM)
    elasticity = PRIOR_ELASTICITY
    bound = [w for w in windows if w.bound and w.tokens_per_second >= MIN_TOKENS_PER_S]
    if len(bound) >= 2:
        # Held at their caps, the windows drew about their caps: the caps are the cleaner
        # measure of the watts each window was given.
        low, high = min(bound, key=lambda w: w.cap_watts), max(bound, key=lambda w: w.cap_watts)
        if high.cap_watts / low.cap_watts >= MIN_POWER_RATIO and low.cap_watts > p0_w:
            measured = math.log(high.tokens_per_second / low.tokens_per_second) / math.log(
                (high.cap_watts - p0_w) / (low.cap_watts - p0_w)
            )
            elasticity = min(max(measured, MIN_ELASTICITY), MAX_ELASTICITY)
    a = newest.tokens_per_second / (newest.watts - p0_w) ** elasticity
    return Curve(a, elasticity, demand_w, p0_w)


def water_fill(
    curves: Sequence[Curve], low_w: Sequence[float], high_w: Sequence[float], total_w: float
) -> list[float]:
    """Caps in [low, high] adding up to at most `total_w`, equalising marginal tokens per watt.

    `total_w` below the sum of the floors gives the floors (the caller reports the shortfall).
    Watts beyond what the curves can use are spread over the room left up to `high_w`.
    """
    floors = sum(low_w)
    if total_w <= floors or not curves:
        return list(low_w)
    useful = [c.cap_at(0.0, lo, hi) for c, lo, hi in zip(curves, low_w, high_w, strict=True)]
    if sum(useful) <= total_w:
        caps = useful
    else:
        level_lo, level_hi = (
            0.0,
            max(
                (
                    c.a * c.e * max(lo - c.p0_w, 1.0) ** (c.e - 1.0)
                    for c, lo in zip(curves, low_w, strict=True)
                ),
                default=1.0,
            ),
        )
        level_hi = max(level_hi, 1e-12) * 2.0
        for _ in range(60):  # the spend is monotone in the level: bisect it
            mid = 0.5 * (level_lo + level_hi)
            spend = sum(
                c.cap_at(mid, lo, hi) for c, lo, hi in zip(curves, low_w, high_w, strict=True)
            )
            if spend > total_w:
                level_lo = mid
            else:
                level_hi = mid
                if total_w - spend < SPEND_TOLERANCE_W:
                    break
        caps = [c.cap_at(level_hi, lo, hi) for c, lo, hi in zip(curves, low_w, high_w, strict=True)]
    spare = total_w - sum(caps)
    room = [hi - cap for cap, hi in zip(caps, high_w, strict=True)]
    total_room = sum(room)
    if spare > 0 and total_room > 0:
        share = min(1.0, spare / total_room)
        caps = [cap + r * share for cap, r in zip(caps, room, strict=True)]
    return caps


@dataclasses.dataclass(frozen=True, slots=True)
class Allocation:
    """One re-balance: the caps to write and what the policy's status says of them.

    `caps_w` holds every capped GPU (reporting or held) in whole watts; `allocated_w` is what
    is counted against the budget (a GPU still settling from a lowered cap counts at its old
    cap); `shortfall_w` > 0 when the GPUs' minimum limits alone exceed the usable budget.
    """

    caps_w: Mapping[GpuKey, int]
    usable_w: float
    allocated_w: float
    held_w: float
    reserved_w: float
    shortfall_w: float
    deferred_w: float

    def by_node(self) -> dict[str, dict[str, int]]:
        """Node name → GPU UUID → cap, grouped in one pass over the caps."""
        grouped: dict[str, dict[str, int]] = {}
        for (node, uuid), watts in self.caps_w.items():
            grouped.setdefault(node, {})[uuid] = watts
        return grouped


def allocate(
    usable_w: float,
    gpus: Sequence[GpuInput],
    written: Mapping[GpuKey, int],
    *,
    held: Mapping[GpuKey, int] | None = None,
    settling: Mapping[GpuKey, int] | None = None,
    reserved_w: float = 0.0,
) -> Allocation:
    """Share `usable_w` among the reporting `gpus`; the caps of `held` GPUs stay as they are.

    `written` is each reporting GPU's cap in force now (absent: a GPU seen for the first
    time, at its minimum limit); `held` the caps of GPUs whose node stopped reporting;
    `settling` the old caps of GPUs lowered less than one settling period ago; `reserved_w`
    watts set aside for nodes placed under the policy that have not reported their GPUs.
    """
    held = held or {}
    settling = settling or {}
    held_w = float(sum(held.values()))
    available_w = usable_w - held_w - reserved_w
    low = [float(math.ceil(g.min_w)) for g in gpus]
    high = [max(float(math.floor(g.max_w)), lo) for g, lo in zip(gpus, low, strict=True)]
    target = water_fill([fit(g) for g in gpus], low, high, available_w)
    shortfall_w = max(0.0, sum(low) - available_w)
    # What each GPU may still draw before this pass: its cap now, or its old cap if settling.
    now_w = [
        max(float(written.get(g.key, lo)), float(settling.get(g.key, 0)))
        for g, lo in zip(gpus, low, strict=True)
    ]
    caps = [_stepped(t, lo) for t, lo in zip(target, low, strict=True)]
    # Lowered caps go out now; raises are funded only by watts nobody may still be drawing.
    committed = sum(max(cap, now) for cap, now in zip(caps, now_w, strict=True) if cap <= now)
    raising = [i for i, (cap, now) in enumerate(zip(caps, now_w, strict=True)) if cap > now]
    committed += sum(now_w[i] for i in raising)
    wanted = sum(caps[i] - now_w[i] for i in raising)
    slack = max(0.0, available_w - committed)
    grant = 1.0 if wanted <= slack else slack / wanted
    deferred_w = 0.0
    for i in raising:
        full = caps[i]
        caps[i] = max(low[i], float(math.floor(now_w[i] + (full - now_w[i]) * grant)))
        caps[i] = min(caps[i], full)
        deferred_w += full - caps[i]
    out: dict[GpuKey, int] = {g.key: int(c) for g, c in zip(gpus, caps, strict=True)}
    counted = sum(max(c, now) if c <= now else c for c, now in zip(caps, now_w, strict=True))
    out.update(held)
    return Allocation(
        caps_w=out,
        usable_w=usable_w,
        allocated_w=counted + held_w,
        held_w=held_w,
        reserved_w=reserved_w,
        shortfall_w=shortfall_w,
        deferred_w=deferred_w,
    )


def _stepped(watts: float, low_w: float) -> float:
    """`watts` rounded down to a whole step above `low_w` (never below it)."""
    return max(low_w, low_w + CAP_STEP_W * math.floor((watts - low_w) / CAP_STEP_W))


class BudgetKeeper:
    """One policy's allocation state across re-balances: who was lowered when.

    The caps in force are read back from the Nodes each pass (`written`), so an operator
    restart loses only the settling times (every GPU then counts at the cap its Node shows).
    """

    def __init__(self, settle_s: float) -> None:
        """`settle_s`: how long a lowered cap is still counted at its old value."""
        self.settle_s = settle_s
        #: GPU → (its cap before it was lowered, when it was lowered)
        self._lowered: dict[GpuKey, tuple[int, float]] = {}
        self.last: Allocation | None = None

    def rebalance(
        self,
        usable_w: float,
        gpus: Sequence[GpuInput],
        written: Mapping[GpuKey, int],
        *,
        held: Mapping[GpuKey, int] | None = None,
        reserved_w: float = 0.0,
        now_s: float,
    ) -> Allocation:
        """Allocate at `now_s` and remember which caps this pass lowered."""
        self._lowered = {k: v for k, v in self._lowered.items() if now_s - v[1] < self.settle_s}
        settling = {k: old for k, (old, _) in self._lowered.items()}
        result = allocate(
            usable_w, gpus, written, held=held, settling=settling, reserved_w=reserved_w
        )
        for key, cap in result.caps_w.items():
            before = written.get(key)
            if before is not None and cap < before:
                old = max(before, settling.get(key, 0))
                self._lowered[key] = (old, now_s)
        self.last = result
        return result

    def forget(self, keep: Iterable[GpuKey]) -> None:
        """Drop the state of GPUs no longer under the policy."""
        alive = set(keep)
        self._lowered = {k: v for k, v in self._lowered.items() if k in alive}
