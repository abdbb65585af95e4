"""Online ridge search: the lowest clock that keeps a phase's measured work rate.

Used by component A when no offline profile names a phase's ridge clock. For each phase
key (`triserve.control.phases.PhaseView.key`) the search alternates short *reference*
windows at the boost clock with *trial* windows at a candidate clock (R T R T R …, each trial
judged against the mean of the references on either side) and compares the work
rate the serving engines report in each: generation tokens per second per running sequence,
i.e. the inverse of the mean inter-token latency over the window (from the engines'
`inter_token_latency` histograms, scraped by the agent). Paired, adjacent windows cancel
slow changes of load. A candidate is accepted when its rate is within the policy's
`maxThroughputLossPercent` of the reference. The
search steps down from boost (or from a counter estimate) and, after the first loss, bisects
between the highest rejected and the lowest accepted clock, then settles on the latter. A settled
key is re-checked every `recheck_s` with one more paired comparison, so a change of model,
batch size or device is followed. Reference windows are at the PMU's own clock, so the
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
#: Supported-clock steps per move down while nothing was rejected yet.
COARSE_STEPS = 8
#: The bisection stops when the rejected and accepted clocks are this many steps apart.
FINE_STEPS = 2
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
    #: Re-checks of the settled clock that failed in a row (two move it up: noise guard).
    failed_rechecks: int = 0
    #: The highest clock rejected since the search (re)started: the bisection's lower end.
    rejected_mhz: int | None = None
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
                st.mode = Mode.REFERENCE
                self._restart(st, now_s)
            else:
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
        """Accept or reject the candidate, then pick the next one or settle.

        After the first loss the search bisects between the highest rejected clock and the
        lowest accepted one until they are `FINE_STEPS` apart, and settles on the latter.
        """
        st.trials += 1
        # No allowance for noise: the windows differ by more than their standard errors
        # (batch composition changes between them), so a loss measured inside the bound is
        # the test, and noise can only make the search settle higher (safer) than needed.
        ok = trial.mean_s <= ref.mean_s * (1.0 + self.max_loss)
        top = limits.default_max_mhz
        rechecking = st.candidate_mhz >= st.ok_mhz
        if ok:
            st.failed_rechecks = 0
            st.ok_mhz = min(st.ok_mhz, st.candidate_mhz)
        else:
            st.rejects += 1
            if rechecking:
                # A re-check failed at the settled clock. One failure may be a change of load
                # between the windows; two in a row move the clock up. One that lost twice
                # the bound (it narrows as the load rises: `IntensityEstimator.observe_load`)
                # moves it a coarse step up at once and re-checks soon.
                st.failed_rechecks += 1
                far = trial.mean_s > ref.mean_s * (1.0 + 2.0 * self.max_loss)
                if st.failed_rechecks >= 2 or far:
                    steps = COARSE_STEPS if far else FINE_STEPS
                    st.ok_mhz = min(limits.step(st.ok_mhz, steps), top)
                    st.failed_rechecks = 0
                self._settle(st, now_s, soon=st.failed_rechecks > 0 or far)
                return
            st.rejected_mhz = max(st.rejected_mhz or 0, st.candidate_mhz)
        lo = st.rejected_mhz
        if lo is None:
            nxt = limits.step(st.ok_mhz, -COARSE_STEPS)
            if nxt >= st.ok_mhz:
                self._settle(st, now_s)
                return
        else:
            if limits.step(lo, FINE_STEPS) >= st.ok_mhz:
                self._settle(st, now_s)
                return
            nxt = limits.snap_up((lo + st.ok_mhz) / 2.0)
            if nxt <= lo:
                nxt = limits.step(lo, 1)
        st.candidate_mhz = nxt

    def _settle(self, st: KeyState, now_s: float, soon: bool = False) -> None:
        st.mode = Mode.SETTLED
        st.pending = st.previous = None
        st.rejected_mhz = None
        st.recheck_s = now_s + (WINDOW_S * 4 if soon else self.recheck_s)

    def widen(self, limits: DeviceLimits) -> None:
        """The latency guard tripped: move every key's clock up and search again later."""
        for st in self.keys.values():
            st.ok_mhz = min(limits.step(st.ok_mhz, 2 * FINE_STEPS), limits.default_max_mhz)
            st.candidate_mhz = st.ok_mhz

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
