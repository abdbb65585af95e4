"""SLO targets: run each GPU as low as the policy's absolute latency targets allow.

Used by `triserve.control.tristrategy.TriServeStrategy` when the policy's
`spec.slo.mode` is ``Targets``. The relative guard (`triserve.control.sloguard`) bounds the
latency against the PMU default's; here the bound is absolute (`SloTargetSetting`: a pipeline
or one stage, a metric, a quantile, seconds), so the controller may trade every bit of the
latency a target leaves free.

Each GPU keeps two clock ceilings, one for compute-bound work (prefill, one-shot stages) and
one for memory-bound decode, that move on the quantiles the serving engines' own histograms
show over a window (the last `window_s`, or the last `long_window_s` for metrics that arrive
once per request). Every `move_every_s` each target relevant to a ceiling is read as a
*headroom used*, measured quantile / target: while every one is below ``1 - margin``
(and `FRESH_OBSERVATIONS` of each arrived since the last move down) the ceiling steps down
by half the spare headroom as a fraction of the boost clock (at least `DOWN_FRACTION`, at
most `MAX_DOWN_FRACTION`; never below `FLOOR_FRACTION` of boost); once any is
above ``1 - margin / 2`` it steps `UP_FRACTION` up. Inter-token latency moves the decode
ceiling only; TTFT and end-to-end latency move both (a prefill waits for the decode step
in flight).

Which observations a target is judged on (only what the agent scrapes):

* a stage target: that stage's engine, on the GPU that hosts it;
* a pipeline's TTFT: its entry stages (no upstream): their first token is the pipeline's;
* a pipeline's inter-token latency: every stage on the GPU that exports one;
* a pipeline's end-to-end latency: the sum of its stages' quantiles over the stages this GPU
  sees (its own, their upstream and downstream neighbours). A stage whose quantile is no
  longer than its upstream's is taken as streamed alongside it (a vocoder fed in chunks) and
  adds nothing. The sum of quantiles is at least the quantile of the sum for stages that
  run one after another, so the estimate errs high: clocks stay higher than needed.

A target at risk also trips a guard at once, without waiting for the next move: when the
share of a stage's observations above its target exceeds ``1 - quantile`` by more than three
standard errors, the GPU goes back to the PMU default for `hold_s` and both ceilings move up.
When both ceilings are at boost and a target is still missed, the targets cannot be met by
clocks: the GPU stays at the PMU default and the readout says so (`SloReadout.unmet`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from triserve.control.decisions import DeviceLimits
from triserve.control.sloguard import SIGMAS, Series, delta_of, share_above
from triserve.telemetry import Histogram, ServingSnapshot, StageObservation

#: Metrics a target may bound, by their `ServingSnapshot` attribute.
METRICS = ("ttft", "inter_token", "e2e")
#: A ceiling's move down, as a fraction of the boost clock (up: `UP_FRACTION`, faster).
DOWN_FRACTION = 0.03
UP_FRACTION = 0.09
#: The largest move down, as a fraction of the boost clock (far from every target).
MAX_DOWN_FRACTION = 0.12
#: Lowest ceiling, as a fraction of the boost clock (component A's ridge floor).
FLOOR_FRACTION = 0.35
#: Observations a window needs before its quantile moves a ceiling.
MIN_OBSERVATIONS = 10.0
#: New observations of every metric a ceiling answers to before it moves down again: a
#: window must show the current clock, not mostly the last one (first tokens and finished
#: requests arrive a few a minute).
FRESH_OBSERVATIONS = 5.0


@dataclass(frozen=True, slots=True)
class SloTargetSetting:
    """One absolute target: `metric` (``ttft``, ``inter_token``, ``e2e``) at `quantile`.

    `pipeline` None matches every pipeline; `stage` None makes it the pipeline's target.
    """

    metric: str
    target_s: float
    quantile: float = 0.99
    pipeline: str | None = None
    stage: str | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"SLO target metric {self.metric!r}; use one of {METRICS}")
        if self.target_s <= 0 or not 0.0 < self.quantile < 1.0:
            raise ValueError("an SLO target needs target_s > 0 and 0 < quantile < 1")

    @property
    def scope(self) -> str:
        """``pipeline/stage`` as status shows it (``*`` where unset)."""
        return f"{self.pipeline or '*'}/{self.stage or '*'}"


@dataclass(frozen=True, slots=True)
class SloMeasured:
    """One target as last judged on this GPU (seconds; shares 0-1)."""

    target: SloTargetSetting
    measured_s: float
    over_share: float
    observations: float

    @property
    def headroom_used(self) -> float:
        """Measured quantile as a share of the target (1.0: at the target)."""
        return self.measured_s / self.target.target_s


@dataclass(frozen=True, slots=True)
class SloReadout:
    """What the SLO controller last measured and chose; exported and reported by the agent.

    `unmet` is True when a target is missed with both ceilings at boost (clocks cannot help).
    """

    measured: tuple[SloMeasured, ...]
    compute_mhz: int | None
    decode_mhz: int | None
    unmet: bool = False

    @property
    def headroom_used(self) -> float:
        """The largest headroom used over the targets (0 without measurements)."""
        return max((m.headroom_used for m in self.measured), default=0.0)

    @property
    def over_share(self) -> float:
        """The largest share of observations above their target."""
        return max((m.over_share for m in self.measured), default=0.0)


class SloTargetController:
    """Per-GPU clock ceilings for compute and decode work under absolute latency targets."""

    def __init__(
        self,
        targets: Sequence[SloTargetSetting],
        margin_pct: float = 20.0,
        move_every_s: float = 10.0,
        window_s: float = 20.0,
        long_window_s: float = 300.0,
        min_count: float = 100.0,
        hold_s: float = 10.0,
    ) -> None:
        self.targets = tuple(targets)
        self.margin = margin_pct / 100.0
        self.move_every_s = move_every_s
        self.window_s = window_s
        self.long_window_s = long_window_s
        self.min_count = min_count
        self.hold_s = hold_s
        self.compute_mhz: int | None = None
        self.decode_mhz: int | None = None
        self.trips = 0
        self.until_s: float | None = None
        self.message = ""
        self.readout = SloReadout((), None, None)
        self._last_move_s: float | None = None
        self._unmet = False
        # Observations of each metric on this GPU's stages: in all, and at the last move down.
        self._seen: dict[str, float] = dict.fromkeys(METRICS, 0.0)
        self._seen_at_move: dict[bool, dict[str, float]] = {}
        self._last: dict[str, ServingSnapshot] = {}
        self._series: dict[tuple[str, str], tuple[Series, Series]] = {}
        self._upstream: dict[str, tuple[str, ...]] = {}
        self._hosted: set[str] = set()
        self._pipeline: dict[str, str | None] = {}

    def active(self, now_s: float) -> bool:
        """True while a tripped target holds the GPU at the PMU default."""
        return self.until_s is not None and now_s < self.until_s

    def ceiling(self, compute: bool) -> int | None:
        """The ceiling for compute-bound (`compute`) or decode work (None: boost)."""
        return self.compute_mhz if compute else self.decode_mhz

    def update(
        self, now_s: float, stages: Sequence[StageObservation], limits: DeviceLimits
    ) -> bool:
        """Feed one tick; move the ceilings when due. Returns True when the guard trips."""
        fresh = self._observe(now_s, stages)
        if not fresh:
            return False
        measured = tuple(m for m in (self._measure(t) for t in self.targets) if m is not None)
        tripped = False
        if not self.active(now_s):
            risky = [m for m in measured if self._at_risk(m)]
            if risky:
                tripped = True
                self.trips += 1
                self.until_s = now_s + self.hold_s
                self.compute_mhz = _up(self.compute_mhz, limits)
                self.decode_mhz = _up(self.decode_mhz, limits)
                worst = max(risky, key=lambda m: m.over_share)
                self.message = (
                    f"{_describe(worst)}: {100 * worst.over_share:.1f}% above target "
                    f"({100 * (1 - worst.target.quantile):.1f}% allowed): PMU default for "
                    f"{self.hold_s:.0f} s, ceilings up"
                )
                # What the old ceilings did is judged: the next moves read fresh windows.
                self._series.clear()
        due = self._last_move_s is None or now_s - self._last_move_s >= self.move_every_s
        if due and not self.active(now_s):
            self._last_move_s = now_s
            self._move(measured, limits)
        if measured or tripped:
            # Kept while the windows refill after a trip: no new reading says it is met.
            self._unmet = (
                self.compute_mhz is None
                and self.decode_mhz is None
                and (tripped or any(m.headroom_used > 1.0 for m in measured))
            )
        self.readout = SloReadout(measured, self.compute_mhz, self.decode_mhz, self._unmet)
        return tripped

    def _move(self, measured: Sequence[SloMeasured], limits: DeviceLimits) -> None:
        for compute in (True, False):
            relevant = [m for m in measured if _moves(m.target.metric, compute)]
            if not relevant:
                continue  # no target this ceiling affects is measured here: stay
            used = max(m.headroom_used for m in relevant)
            current = self.ceiling(compute)
            if used > 1.0 - self.margin / 2.0:
                moved = _up(current, limits)
            elif used < 1.0 - self.margin and self._fresh_since_move(compute, relevant):
                moved = _down(current, limits, 1.0 - self.margin - used)
                self._seen_at_move[compute] = dict(self._seen)
            else:
                continue
            if compute:
                self.compute_mhz = moved
            else:
                self.decode_mhz = moved
        worst = max(measured, key=lambda m: m.headroom_used, default=None)
        where = f"; worst {_describe(worst)}" if worst is not None else ""
        self.message = (
            f"SLO targets: compute ceiling {_mhz(self.compute_mhz)}, decode ceiling "
            f"{_mhz(self.decode_mhz)}{where}"
        )

    def _fresh_since_move(self, compute: bool, relevant: Sequence[SloMeasured]) -> bool:
        """True when every metric of `relevant` got enough observations since the last move."""
        then = self._seen_at_move.get(compute)
        if then is None:
            return True
        return all(
            self._seen[m.target.metric] - then[m.target.metric] >= FRESH_OBSERVATIONS
            for m in relevant
        )

    def _at_risk(self, m: SloMeasured) -> bool:
        if m.target.stage is None and m.target.metric == "e2e":
            return False  # an estimate over stages has no per-observation share to test
        allowed = 1.0 - m.target.quantile
        noise = SIGMAS * math.sqrt(allowed * m.target.quantile / m.observations)
        return m.over_share > allowed + noise

    def _observe(self, now_s: float, stages: Sequence[StageObservation]) -> bool:
        """Take the new histogram deltas of every stage this GPU sees; True if any arrived."""
        fresh = False
        self._hosted = {o.stage for o in stages}
        for stage, pipeline, upstream, snap in _visible(stages):
            self._upstream.setdefault(stage, upstream)
            self._pipeline.setdefault(stage, pipeline)
            last = self._last.get(stage)
            if snap is None or last is snap:
                continue
            self._last[stage] = snap
            if last is None:
                continue
            for metric in METRICS:
                delta = delta_of(last, snap, metric)
                if delta is None:
                    continue
                pair = self._series.get((stage, metric))
                if pair is None:
                    pair = (Series(self.window_s), Series(self.long_window_s))
                    self._series[(stage, metric)] = pair
                pair[0].add(now_s, delta)
                pair[1].add(now_s, delta)
                if stage in self._hosted:
                    fresh = True
                    self._seen[metric] += delta.count
        return fresh

    def _window(self, stage: str, metric: str) -> Histogram | None:
        pair = self._series.get((stage, metric))
        if pair is None:
            return None
        short, long = pair[0].total(), pair[1].total()
        if short is not None and short.count >= self.min_count:
            return short
        if long is not None and long.count >= MIN_OBSERVATIONS:
            return long
        return None

    def _stages_of(self, t: SloTargetSetting) -> list[str]:
        """The stages target `t` is judged on from this GPU."""
        pipe = [s for s, p in self._pipeline.items() if t.pipeline is None or p == t.pipeline]
        if t.stage is not None:
            return [s for s in pipe if s == t.stage and s in self._hosted]
        if t.metric == "ttft":
            return [s for s in pipe if s in self._hosted and not self._upstream.get(s)]
        if t.metric == "inter_token":
            return [s for s in pipe if s in self._hosted]
        return pipe if any(s in self._hosted for s in pipe) else []

    def _measure(self, t: SloTargetSetting) -> SloMeasured | None:
        stages = self._stages_of(t)
        if not stages:
            return None
        if t.stage is None and t.metric == "e2e":
            return self._pipeline_e2e(t, stages)
        worst: SloMeasured | None = None
        for stage in stages:
            hist = self._window(stage, t.metric)
            if hist is None:
                continue
            q = hist.quantile_s(t.quantile)
            if q is None:
                continue
            m = SloMeasured(t, q, share_above(hist, t.target_s), hist.count)
            if worst is None or m.headroom_used > worst.headroom_used:
                worst = m
        return worst

    def _pipeline_e2e(self, t: SloTargetSetting, stages: list[str]) -> SloMeasured | None:
        quantiles: dict[str, float] = {}
        count = math.inf
        for stage in stages:
            hist = self._window(stage, "e2e")
            q = hist.quantile_s(t.quantile) if hist is not None else None
            if hist is None or q is None:
                return None  # a stage without enough requests yet: no estimate
            quantiles[stage] = q
            count = min(count, hist.count)
        total_s = 0.0
        for stage, q in quantiles.items():
            ups = [quantiles[u] for u in self._upstream.get(stage, ()) if u in quantiles]
            if ups and q <= max(ups) * 1.02:
                continue  # streamed alongside its upstream: its time is already counted
            total_s += q
        return SloMeasured(t, total_s, 0.0, count)


def _visible(
    stages: Sequence[StageObservation],
) -> list[tuple[str, str | None, tuple[str, ...], ServingSnapshot | None]]:
    """Every stage this GPU sees: (stage, pipeline, its upstream, latest scrape), hosted first.

    Neighbours' upstream links are known only where the hosted stages name them (a
    neighbour's own upstream is taken as unknown, i.e. none).
    """
    out: dict[str, tuple[str, str | None, tuple[str, ...], ServingSnapshot | None]] = {}
    for o in stages:
        out[o.stage] = (o.stage, o.pipeline, o.upstream, o.serving)
    for o in stages:
        if len(o.upstream) == len(o.upstream_serving):
            for name, snap in zip(o.upstream, o.upstream_serving, strict=True):
                out.setdefault(name, (name, o.pipeline, (), snap))
        for d in o.downstream:
            out.setdefault(d.stage, (d.stage, o.pipeline, (o.stage,), d.serving))
    return list(out.values())


def _moves(metric: str, compute: bool) -> bool:
    """Whether `metric` moves the compute ceiling (`compute`) or the decode one.

    A new request's prefill waits for the decode step in flight, so a slower decode also
    delays first tokens: TTFT moves both ceilings; inter-token latency only decode's.
    """
    return not (compute and metric == "inter_token")


def _up(current: int | None, limits: DeviceLimits) -> int | None:
    if current is None:
        return None
    moved = limits.snap_up(current + UP_FRACTION * limits.default_max_mhz)
    return None if moved >= limits.default_max_mhz else moved


def _down(current: int | None, limits: DeviceLimits, spare: float = 0.0) -> int | None:
    """One move down: `DOWN_FRACTION` of boost, more while much headroom is left.

    `spare` is the headroom below the margin (``1 - margin - used``); half of it, as a
    fraction of boost, is taken in one move (at most `MAX_DOWN_FRACTION`), so loose targets
    are reached in a few moves while a target near its margin is approached in small steps.
    """
    top = limits.default_max_mhz
    floor = limits.snap_up(FLOOR_FRACTION * top)
    step = min(max(DOWN_FRACTION, 0.5 * spare), MAX_DOWN_FRACTION)
    moved = limits.snap_down((current if current is not None else top) - step * top)
    return None if moved >= top else max(moved, floor)


def _mhz(clock: int | None) -> str:
    return "boost" if clock is None else f"{clock} MHz"


def _describe(m: SloMeasured) -> str:
    t = m.target
    return (
        f"{t.scope} {t.metric} p{100 * t.quantile:g} {m.measured_s * 1000:.0f} ms of "
        f"{t.target_s * 1000:.0f} ms ({100 * m.headroom_used:.0f}% used)"
    )
