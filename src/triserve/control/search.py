"""Online ridge search: the lowest clock that keeps a phase's measured work rate.

Used by component A when no offline profile names a phase's ridge clock. For each phase
key (`triserve.control.phases.PhaseView.key`) the search alternates short *reference*
windows at the boost clock with *trial* windows at a candidate clock and compares the work
rate the serving engines report in each: generation tokens per second per running sequence,
i.e. the inverse of the mean inter-token latency over the window (from the engines'
`inter_token_latency` histograms, scraped by the agent). Paired, adjacent windows cancel
slow changes of load. A candidate is accepted when its rate is within the policy's
`maxThroughputLossPercent` of the reference (allowing one standard error of noise); the
search then steps further down, and at the first loss steps back up and settles. A settled
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
WINDOW_S = 2.0
#: Supported-clock steps per move while nothing was rejected yet, and after.
COARSE_STEPS = 8
FINE_STEPS = 2
#: Seconds a settled key holds its clock before it is checked again.
RECHECK_S = 60.0
#: Inter-token observations a window needs to count.
MIN_TOKENS = 20.0


class Mode(enum.Enum):
    """What the current window of a key measures."""

    REFERENCE = "reference"
    TRIAL = "trial"
    SETTLED = "settled"


@dataclass(slots=True)
class _Window:
    """Inter-token latency observations gathered in one window."""

    sum_s: float = 0.0
    count: float = 0.0
    sum_sq: float = 0.0

    def add(self, hist: Histogram) -> None:
        if hist.count <= 0:
            return
        self.sum_s += hist.sum_s
        self.count += hist.count
        mean = hist.sum_s / hist.count
        self.sum_sq += hist.count * mean * mean

    @property
    def mean_s(self) -> float:
        return self.sum_s / self.count if self.count > 0 else math.nan

    @property
    def stderr_s(self) -> float:
        if self.count <= 1:
            return math.inf
        var = max(self.sum_sq / self.count - self.mean_s**2, 0.0)
        # Per-scrape means understate the spread; floor the error at 0.2 % of the mean.
        return max(math.sqrt(var / self.count), 0.002 * self.mean_s)


@dataclass(slots=True)
class KeyState:
    """The search's state for one phase key."""

    ok_mhz: int
    candidate_mhz: int
    mode: Mode = Mode.REFERENCE
    window_start_s: float = 0.0
    reference: _Window = field(default_factory=_Window)
    trial: _Window = field(default_factory=_Window)
    fine: bool = False
    recheck_s: float = 0.0
    trials: int = 0
    rejects: int = 0
    #: The first scrape of a window straddles the switch of clocks: it is not counted.
    fresh: bool = True


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

    def _restart(self, st: KeyState, now_s: float) -> None:
        st.window_start_s = now_s
        st.fresh = True
        if st.mode is Mode.TRIAL:
            st.trial = _Window()
        elif st.mode is Mode.REFERENCE:
            st.reference = _Window()

    def _end_window(self, st: KeyState, now_s: float, limits: DeviceLimits) -> None:
        st.fresh = True
        if st.mode is Mode.REFERENCE:
            if st.reference.count >= MIN_TOKENS:
                st.mode = Mode.TRIAL
                st.trial = _Window()
            else:
                st.reference = _Window()
            st.window_start_s = now_s
            return
        ref, trial = st.reference, st.trial
        st.window_start_s = now_s
        if trial.count < MIN_TOKENS:
            st.trial = _Window()
            return
        st.trials += 1
        noise = math.hypot(ref.stderr_s, trial.stderr_s)
        ok = trial.mean_s <= ref.mean_s * (1.0 + self.max_loss) + noise
        top = limits.default_max_mhz
        if ok:
            st.ok_mhz = min(st.ok_mhz, st.candidate_mhz)
            nxt = limits.step(st.ok_mhz, -(FINE_STEPS if st.fine else COARSE_STEPS))
            if nxt >= st.ok_mhz:
                self._settle(st, now_s)
                return
            st.candidate_mhz = nxt
        else:
            st.rejects += 1
            if st.candidate_mhz >= st.ok_mhz:
                # A re-check failed at the settled clock: move it up.
                st.ok_mhz = min(limits.step(st.ok_mhz, FINE_STEPS), top)
            if not st.fine:
                st.fine = True
                st.candidate_mhz = limits.step(st.candidate_mhz, COARSE_STEPS - FINE_STEPS)
                if st.candidate_mhz >= st.ok_mhz:
                    self._settle(st, now_s)
                    return
            else:
                self._settle(st, now_s)
                return
        st.mode = Mode.REFERENCE
        st.reference = _Window()

    def _settle(self, st: KeyState, now_s: float) -> None:
        st.mode = Mode.SETTLED
        st.recheck_s = now_s + self.recheck_s

    def widen(self, limits: DeviceLimits) -> None:
        """The latency guard tripped: move every key's clock up and search again later."""
        for st in self.keys.values():
            st.ok_mhz = min(limits.step(st.ok_mhz, 2 * FINE_STEPS), limits.default_max_mhz)
            st.candidate_mhz = st.ok_mhz
            st.fine = True

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
