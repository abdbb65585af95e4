"""Online ridge search: the lowest clock that keeps a phase's measured work rate.

Used by component A when no offline profile names a phase's ridge clock. For each phase
key (`triserve.control.phases.PhaseView.key`) the search alternates short *reference*
windows at the boost clock with *trial* windows at a candidate clock (R T R T R …, each trial
judged against the mean of the references on either side) and compares the work rate the
serving engines report in each: generation tokens per second per running sequence, i.e. the
inverse of the mean inter-token latency over the window (from the engines'
`inter_token_latency` histograms, scraped by the agent). Paired, adjacent windows cancel
slow changes of load.

One pair is noisy (the batch changes between windows), so no single pair decides. Each pair
is a point of a one-parameter model of a memory-bound step: the time that scales with the
clock is a fixed share ``s`` of the step at boost (docs/calibration.md), so at clock ``f``
the step is longer by ``s · (f_boost / f - 1)``. The search fits ``s`` through every pair
of the key (least squares through the origin, older pairs fading), takes its upper
confidence bound ``s + Z · SE`` and locks the lowest supported clock whose predicted loss
stays within the allowed one (the policy's `maxThroughputLossPercent`, or the latency
bound's share where the caller sets one). The first pairs explore coarse steps down from
boost (or from a counter estimate) and stop at the first that loses more than twice the
bound; later ones confirm the model's clock. After `SETTLE_PAIRS` pairs the key settles;
it is re-checked every `recheck_s` with one more pair at its clock, so a change of model,
batch size or device moves the fit. Noise widens the confidence bound and so raises the
clock: it never walks the clock down. Reference windows are at the PMU's own clock, so the
latency guard takes them as its default-clock reference too.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from triserve.control.decisions import DeviceLimits
from triserve.telemetry import Histogram, ServingSnapshot, StageObservation

#: Seconds of each reference or trial window.
WINDOW_S = 3.0
#: Supported-clock steps per exploring move down.
COARSE_STEPS = 8
#: Pairs that explore coarse steps down before the fitted model picks the clock.
EXPLORE_PAIRS = 3
#: Pairs after which a key settles (and then one more at each re-check).
SETTLE_PAIRS = 6
#: Standard errors added to the fitted clock-sensitive share (one-sided, about 84%).
Z = 1.0
#: Weight each older pair keeps when a new one arrives (about 20 pairs remembered).
FORGET = 0.95
#: Smallest clock-sensitive share the fit may claim (a phase is never taken as clock-free).
MIN_SHARE = 0.002
#: Seconds a settled key holds its clock before it is checked again.
RECHECK_S = 120.0
#: Inter-token observations a window needs to count.
MIN_TOKENS = 20.0


class Mode(enum.Enum):
    """What the current window of a key measures."""

    REFERENCE = "reference"
    TRIAL = "trial"
    SETTLED = "settled"


@dataclass(slots=True)
class _Window:
    """Inter-token latency observations gathered in one window: their sum and count."""

    sum_s: float = 0.0
    count: float = 0.0

    def add(self, hist: Histogram) -> None:
        if hist.count > 0:
            self.sum_s += hist.sum_s
            self.count += hist.count

    def merged(self, other: _Window) -> _Window:
        """Both windows' observations together."""
        return _Window(self.sum_s + other.sum_s, self.count + other.count)

    @property
    def mean_s(self) -> float:
        return self.sum_s / self.count if self.count > 0 else math.nan


@dataclass(slots=True)
class SensitivityFit:
    """Least squares through the origin of step-time loss on ``f_boost / f - 1``, fading."""

    sxx: float = 0.0
    sxy: float = 0.0
    syy: float = 0.0
    n: float = 0.0

    def add(self, x: float, y: float) -> None:
        """Fold in one pair: `x` = boost / clock - 1, `y` = the measured step-time loss."""
        self.sxx = FORGET * self.sxx + x * x
        self.sxy = FORGET * self.sxy + x * y
        self.syy = FORGET * self.syy + y * y
        self.n = FORGET * self.n + 1.0

    def upper_share(self) -> float | None:
        """The share's upper confidence bound (None before two pairs)."""
        if self.n < 1.5 or self.sxx <= 0:
            return None
        share = self.sxy / self.sxx
        residual = max(self.syy - self.sxy * self.sxy / self.sxx, 0.0)
        se = math.sqrt(residual / (self.n - 1.0) / self.sxx)
        return max(share + Z * se, MIN_SHARE)


@dataclass(slots=True)
class KeyState:
    """The search's state for one phase key."""

    ok_mhz: int
    candidate_mhz: int
    mode: Mode = Mode.REFERENCE
    window_start_s: float = 0.0
    reference: _Window = field(default_factory=_Window)
    trial: _Window = field(default_factory=_Window)
    recheck_s: float = 0.0
    trials: int = 0
    rejects: int = 0
    #: The first scrape of a window straddles the switch of clocks: it is not counted.
    fresh: bool = True
    #: The pairs judged so far, as a fitted clock-sensitive share.
    fit: SensitivityFit = field(default_factory=SensitivityFit)
    #: Still exploring coarse steps down (no pair has lost twice the bound yet).
    exploring: bool = True
    #: The reference window before the pending trial, and the trial awaiting judgement.
    previous: _Window | None = None
    pending: _Window | None = None


class RidgeSearch:
    """Per-GPU online ridge search over phase keys."""

    def __init__(self, max_loss_pct: float, recheck_s: float = RECHECK_S) -> None:
        self.max_loss = max_loss_pct / 100.0
        self.recheck_s = recheck_s
        self.keys: dict[tuple[tuple[str, str], ...], KeyState] = {}
        self._last_snaps: dict[str, ServingSnapshot] = {}
        self._key: tuple[tuple[str, str], ...] | None = None
        #: Grows each time the latency guard trips (`widen`): the fitted share is scaled by it.
        self.caution = 1.0
        self.message = ""

    def clock(
        self,
        now_s: float,
        key: tuple[tuple[str, str], ...],
        stages: Sequence[StageObservation],
        limits: DeviceLimits,
        start_mhz: int | None = None,
    ) -> int | None:
        """The clock ceiling for `key` this tick (None: the boost clock, a reference window).

        `start_mhz` is where a new key's search starts (e.g. a counter estimate), default
        one coarse step below boost.
        """
        top = limits.default_max_mhz
        st = self.keys.get(key)
        if st is None:
            first = start_mhz if start_mhz is not None else limits.step(top, -COARSE_STEPS)
            related = [v for k, v in self.keys.items() if v.trials and set(key) & set(k)]
            if related:
                # A mix that shares a phase with a searched key starts from its clock.
                first = max(first, max(k.ok_mhz for k in related))
            st = self.keys[key] = KeyState(ok_mhz=top, candidate_mhz=min(first, top))
            st.window_start_s = now_s
        if key != self._key:
            # A new phase: restart the current window so it holds one phase only.
            self._key = key
            self._restart(st, now_s)
        delta = self._itl_delta(stages)
        if st.mode is Mode.SETTLED:
            if now_s >= st.recheck_s:
                st.candidate_mhz = st.ok_mhz
                if st.ok_mhz >= top:
                    # Settled at boost has nothing to re-check: explore down again.
                    st.candidate_mhz = limits.step(top, -COARSE_STEPS)
                    st.exploring = True
                st.mode = Mode.REFERENCE
                self._restart(st, now_s)
            else:
                # The allowed loss follows the load: the fitted model re-reads it each tick.
                if not st.exploring:
                    st.ok_mhz = self._model_clock(st, limits)
                self.message = f"searched ridge {st.ok_mhz} MHz for {_label(key)}"
                return st.ok_mhz if st.ok_mhz < top else None
        window = st.reference if st.mode is Mode.REFERENCE else st.trial
        if delta is not None:
            if st.fresh:
                st.fresh = False
            else:
                window.add(delta)
        if now_s - st.window_start_s >= WINDOW_S:
            self._end_window(st, now_s, limits)
        if st.mode is Mode.TRIAL:
            self.message = (
                f"ridge search for {_label(key)}: trying {st.candidate_mhz} MHz "
                f"(accepted {st.ok_mhz} MHz)"
            )
            return st.candidate_mhz if st.candidate_mhz < top else None
        if st.mode is Mode.SETTLED:
            self.message = f"searched ridge {st.ok_mhz} MHz for {_label(key)}"
            return st.ok_mhz if st.ok_mhz < top else None
        self.message = f"ridge search for {_label(key)}: reference window at boost"
        return None

    def interrupt(self, now_s: float) -> None:
        """Another component overrode this tick's clock: drop the open window.

        A trial window that ran at boost (or a reference that ran capped) would judge a clock
        it never measured, so the window starts again once the search's clock is back.
        """
        st = self.keys.get(self._key) if self._key is not None else None
        if st is not None and st.mode is not Mode.SETTLED:
            self._restart(st, now_s)

    def respect_floor(self, now_s: float, floor_mhz: int) -> None:
        """No trial below `floor_mhz` (a clock the caller will not run): try the floor instead.

        A key whose accepted clock is at the floor already has nothing left to search: it
        settles there.
        """
        st = self.keys.get(self._key) if self._key is not None else None
        if st is None or st.mode is Mode.SETTLED or st.candidate_mhz >= floor_mhz:
            return
        if st.ok_mhz <= floor_mhz:
            self._settle(st, now_s)
            return
        st.candidate_mhz = floor_mhz
        if st.mode is Mode.TRIAL:
            self._restart(st, now_s)

    def _restart(self, st: KeyState, now_s: float) -> None:
        st.window_start_s = now_s
        st.fresh = True
        if st.mode is Mode.TRIAL:
            st.trial = _Window()
        elif st.mode is Mode.REFERENCE:
            st.reference = _Window()

    def _end_window(self, st: KeyState, now_s: float, limits: DeviceLimits) -> None:
        st.fresh = True
        st.window_start_s = now_s
        if st.mode is Mode.TRIAL:
            if st.trial.count < MIN_TOKENS:
                st.trial = _Window()
                return
            # Judge the trial once the next reference window is in: against the mean of the
            # references before and after it, so a steady change of load cancels out.
            st.pending = st.trial
            st.mode = Mode.REFERENCE
            st.reference = _Window()
            return
        if st.reference.count < MIN_TOKENS:
            st.reference = _Window()
            return
        if st.pending is not None and st.previous is not None:
            pending, st.pending = st.pending, None
            self._judge(st, now_s, limits, st.previous.merged(st.reference), pending)
            if st.mode is Mode.SETTLED:
                return
        st.previous = st.reference
        st.mode = Mode.TRIAL
        st.trial = _Window()

    def _judge(
        self, st: KeyState, now_s: float, limits: DeviceLimits, ref: _Window, trial: _Window
    ) -> None:
        """Fold one pair into the key's fit, then pick the next candidate or settle."""
        st.trials += 1
        top = limits.default_max_mhz
        candidate = st.candidate_mhz
        loss = trial.mean_s / ref.mean_s - 1.0
        if loss > self.max_loss:
            st.rejects += 1
        if candidate < top:
            st.fit.add(top / candidate - 1.0, loss)
        if st.exploring:
            lower = limits.step(candidate, -COARSE_STEPS)
            if st.fit.n < EXPLORE_PAIRS and loss <= 2.0 * self.max_loss and lower < candidate:
                st.candidate_mhz = lower
                return
            st.exploring = False
        st.ok_mhz = self._model_clock(st, limits)
        if st.trials >= SETTLE_PAIRS:
            self._settle(st, now_s)
            return
        st.candidate_mhz = st.ok_mhz if st.ok_mhz < top else limits.step(top, -COARSE_STEPS)

    def _model_clock(self, st: KeyState, limits: DeviceLimits) -> int:
        """The lowest supported clock whose predicted loss is within the allowed one."""
        top = limits.default_max_mhz
        share = st.fit.upper_share()
        if share is None or self.max_loss <= 0:
            return top
        wanted = top / (1.0 + self.max_loss / (share * self.caution))
        return min(limits.snap_up(wanted), top)

    def _settle(self, st: KeyState, now_s: float) -> None:
        st.mode = Mode.SETTLED
        st.pending = st.previous = None
        st.recheck_s = now_s + self.recheck_s

    def widen(self, limits: DeviceLimits) -> None:
        """The latency guard tripped: take every key's clock share as larger, re-check soon."""
        self.caution = min(self.caution * 1.5, 8.0)
        for st in self.keys.values():
            if st.mode is Mode.SETTLED:
                st.ok_mhz = self._model_clock(st, limits) if not st.exploring else st.ok_mhz
                st.recheck_s = 0.0
            st.candidate_mhz = max(st.candidate_mhz, st.ok_mhz)

    def _itl_delta(self, stages: Sequence[StageObservation]) -> Histogram | None:
        """Inter-token latency observed since the previous scrape, summed over stages."""
        total: Histogram | None = None
        for obs in stages:
            snap = obs.serving
            if snap is None or snap.inter_token is None:
                continue
            last = self._last_snaps.get(obs.stage)
            if last is snap:
                continue
            self._last_snaps[obs.stage] = snap
            if last is None or last.inter_token is None:
                continue
            if len(last.inter_token.upper_bounds_s) != len(snap.inter_token.upper_bounds_s):
                continue
            d = snap.inter_token.minus(last.inter_token)
            if d.count <= 0 or d.sum_s < 0:
                continue
            total = d if total is None else _merge(total, d)
        return total


def _merge(a: Histogram, b: Histogram) -> Histogram:
    if a.upper_bounds_s != b.upper_bounds_s:
        return Histogram((math.inf,), (a.count + b.count,), a.sum_s + b.sum_s, a.count + b.count)
    counts = tuple(x + y for x, y in zip(a.cumulative_counts, b.cumulative_counts, strict=True))
    return Histogram(a.upper_bounds_s, counts, a.sum_s + b.sum_s, a.count + b.count)


def _label(key: tuple[tuple[str, str], ...]) -> str:
    return "+".join(f"{s}:{p}" for s, p in key) or "idle"
