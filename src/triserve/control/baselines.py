"""Baseline strategies Tri-serve is measured against, and the strategy factory.

- `DefaultStrategy`: the PMU's auto-boost, no control at all.
- `StaticClockStrategy`: one locked SM clock, always.
- `PowerCapStrategy`: one power limit, clocks left to the PMU under it.
- `SloDvfsStrategy`: feedback DVFS in the style of throttLL'eM / GreenLLM — walks one
  GPU-wide clock down while windowed inter-token latency (TBT) stays under
  ``baseline x (1 + bound)`` within its noise, and up when it does not; it knows nothing
  of stages, stalls, A.I. or temperature.
- `PhaseDvfsStrategy`: phase-aware feedback DVFS in the spirit of GreenLLM — one clock
  target for prefill-like work driven by TTFT, one for decode driven by inter-token latency.

`build_strategy(settings)` picks the strategy a policy names; the node agent and the bench
both go through it (the bench adds its oracle, which lives in `triserve.bench`).
"""

from __future__ import annotations

from triserve.control.decisions import Decision, DeviceLimits, Reason, Strategy, TickContext
from triserve.control.latency import LatencyTracker, WindowStat
from triserve.control.phases import phase_activity
from triserve.control.settings import ControlSettings, StrategyKind
from triserve.control.tristrategy import TriServeStrategy


class DefaultStrategy:
    """No control: the PMU decides (reason ``default`` every tick)."""

    name = "default"

    def decide(self, ctx: TickContext) -> Decision:
        """Always hand the clock to the PMU."""
        return Decision(None, Reason.DEFAULT, "PMU default (no control)")


class StaticClockStrategy:
    """Lock one SM clock (snapped to a supported one within the policy limits)."""

    name = "static"

    def __init__(self, clock_mhz: int) -> None:
        self.clock_mhz = clock_mhz

    def decide(self, ctx: TickContext) -> Decision:
        """Always the configured clock."""
        clock = ctx.limits.snap_down(self.clock_mhz)
        return Decision(clock, Reason.DEFAULT, f"static clock {clock} MHz")


class PowerCapStrategy:
    """Enforce one power limit (clamped to the device's range); clocks stay with the PMU."""

    name = "power-cap"

    def __init__(self, watts: int) -> None:
        self.limit_mw = watts * 1000

    def decide(self, ctx: TickContext) -> Decision:
        """Always the configured power limit."""
        limit = min(max(self.limit_mw, ctx.limits.power_min_mw), ctx.limits.power_max_mw)
        return Decision(None, Reason.DEFAULT, f"power cap {limit / 1000:.0f} W", limit)


class SloDvfsStrategy:
    """Latency-feedback DVFS without stage awareness (throttLL'eM / GreenLLM style)."""

    name = "slo-dvfs"

    def __init__(self, max_increase_pct: float, warmup_s: float = 10.0) -> None:
        self.bound = max_increase_pct / 100.0
        self.warmup_s = warmup_s
        self.tracker = LatencyTracker(window_s=6.0)
        self.baseline: dict[tuple[str, str], WindowStat] = {}
        self.clock_mhz: int | None = None
        self._start_s: float | None = None
        self._last_move_s: float | None = None  # None: the clock has not moved yet

    def decide(self, ctx: TickContext) -> Decision:
        """Step the GPU-wide clock ceiling by the latency error of the last window."""
        if self._start_s is None:
            self._start_s = ctx.now_s
        stats = self.tracker.observe(ctx.stages)
        if ctx.now_s - self._start_s < self.warmup_s or not self.baseline:
            for key, stat in stats.items():
                if key[1] == "inter_token" and stat.count >= 10:
                    self.baseline[key] = stat
            return Decision(None, Reason.DEFAULT, "learning the latency baseline at default")
        worst = self._worst_inflation(stats)
        last_s = self._last_move_s
        if worst is not None and (last_s is None or ctx.now_s - last_s >= 1.0):
            self._last_move_s = ctx.now_s
            current = self.clock_mhz if self.clock_mhz is not None else ctx.limits.default_max_mhz
            if worst > self.bound:
                self.clock_mhz = ctx.limits.step(current, 4)
            elif worst < 0.5 * self.bound:
                self.clock_mhz = ctx.limits.step(current, -1)
            if self.clock_mhz is not None and self.clock_mhz >= ctx.limits.default_max_mhz:
                self.clock_mhz = None
        if self.clock_mhz is None:
            return Decision(None, Reason.DEFAULT, "latency at its bound: PMU default")
        reason = Reason.SLO_GUARD if worst is not None and worst > self.bound else Reason.DEFAULT
        return Decision(self.clock_mhz, reason, f"latency feedback: {self.clock_mhz} MHz")

    def _worst_inflation(self, stats: dict[tuple[str, str], WindowStat]) -> float | None:
        """Largest inflation over baseline, less one standard error of noise (TBT only)."""
        worst: float | None = None
        for key, stat in stats.items():
            base = self.baseline.get(key)
            if key[1] != "inter_token" or base is None or base.mean_s <= 0 or stat.count < 10:
                continue
            noise_s = (stat.stderr_s**2 + base.stderr_s**2) ** 0.5
            inflation = (stat.mean_s - noise_s) / base.mean_s - 1.0
            worst = inflation if worst is None else max(worst, inflation)
        return worst


#: Tensor-pipe activity above which the last sample period ran prefill-like (compute) work.
PREFILL_TENSOR_ACTIVE = 0.3
#: Share of prompt tokens among tokens processed in a scrape window that marks prefill work.
PREFILL_TOKEN_SHARE = 0.5


class PhaseDvfsStrategy:
    """Phase-aware latency-feedback DVFS, in the spirit of GreenLLM (prefill and decode apart).

    GreenLLM (Liu, Huang, Zapater, Atienza: "GreenLLM: SLO-Aware Dynamic Frequency Scaling
    for Energy-Efficient LLM Serving", arXiv:2508.16449, 2025) observes that the default GPU
    governor treats the compute-bound, latency-critical prefill and the memory-bound,
    token-by-token decode alike, and controls them separately: prefill clocks are chosen per
    prompt-length class from fitted latency/power models under a TTFT objective, and decode
    clocks by a light feedback loop that moves the frequency in small steps, with hysteresis,
    to keep tail time-between-tokens within its target. GreenLLM sits inside the serving
    stack and knows which phase it launches; this rendition runs where the node agent does
    and sees only what the agent scrapes, so it keeps the separation and the feedback but
    not the in-engine phase switch or the fitted prefill models:

    - two targets per GPU, a prefill clock and a decode clock, both starting at boost;
    - the phase is read each tick from the GPU's tensor-pipe activity over the last sample
      period when the device reports it (prefill and one-shot encoder passes keep the tensor
      pipes busy, decode does not), otherwise from the serving counters: queued requests, or
      a scrape window dominated by prompt tokens, mean prefill; running requests mean decode;
      an idle GPU waits at the prefill clock, since new work starts with a prefill;
    - after a warm-up at default clocks that learns each stage's TTFT and inter-token
      baselines, the prefill target follows windowed TTFT and the decode target follows
      windowed inter-token latency: four steps up when one is clearly (beyond its noise)
      over ``baseline x (1 + bound)``, one step down when every stage is clearly under
      ``baseline x (1 + bound / 2)``, at most one move per `move_every_s` per target; a
      target without enough observations stays where it is.

    It knows nothing of dependency stalls, arithmetic intensity or temperature.
    """

    name = "phase-dvfs"

    def __init__(
        self,
        max_increase_pct: float,
        warmup_s: float = 20.0,
        move_every_s: float = 1.0,
        ttft_window_s: float = 30.0,
        tbt_window_s: float = 6.0,
        ttft_min_count: float = 5.0,
        tbt_min_count: float = 10.0,
    ) -> None:
        self.bound = max_increase_pct / 100.0
        self.warmup_s = warmup_s
        self.move_every_s = move_every_s
        self._loops = {
            "ttft": _PhaseLoop(LatencyTracker(ttft_window_s), ttft_min_count),
            "inter_token": _PhaseLoop(LatencyTracker(tbt_window_s), tbt_min_count),
        }
        self._start_s: float | None = None

    @property
    def prefill_mhz(self) -> int | None:
        """The prefill clock target (None = boost, left to the PMU)."""
        return self._loops["ttft"].clock_mhz

    @property
    def decode_mhz(self) -> int | None:
        """The decode clock target (None = boost, left to the PMU)."""
        return self._loops["inter_token"].clock_mhz

    def decide(self, ctx: TickContext) -> Decision:
        """Update both targets from their latency windows, then lock the current phase's."""
        if self._start_s is None:
            self._start_s = ctx.now_s
        learning = ctx.now_s - self._start_s < self.warmup_s
        for metric, loop in self._loops.items():
            window = loop.tracker.observe(ctx.stages)
            stats = {stage: v for (stage, m), v in window.items() if m == metric}
            if learning:
                loop.learn(stats)
            elif loop.due(ctx.now_s, self.move_every_s):
                loop.step(ctx.now_s, ctx.limits, stats, self.bound)
        if learning:
            return Decision(None, Reason.DEFAULT, "learning TTFT/TBT baselines at default")
        phase = self.phase(ctx)
        target = self.prefill_mhz if phase == "prefill" else self.decode_mhz
        if target is None:
            return Decision(None, Reason.DEFAULT, f"{phase}: boost (PMU default)")
        return Decision(target, Reason.DEFAULT, f"{phase} clock {target} MHz")

    @staticmethod
    def phase(ctx: TickContext) -> str:
        """``prefill`` or ``decode``: which target this tick's work calls for."""
        if not ctx.signals.busy:
            return "prefill"
        activity = phase_activity(ctx.sample)
        if activity is not None:
            return "prefill" if activity.tensor_active >= PREFILL_TENSOR_ACTIVE else "decode"
        if any(o.serving is not None and o.serving.waiting > 0 for o in ctx.stages):
            return "prefill"
        share = ctx.signals.prefill_share
        return "prefill" if share is not None and share >= PREFILL_TOKEN_SHARE else "decode"


class _PhaseLoop:
    """One latency loop of `PhaseDvfsStrategy`: a tracker, a baseline and a clock target."""

    def __init__(self, tracker: LatencyTracker, min_count: float) -> None:
        self.tracker = tracker
        self.min_count = min_count
        self.baseline: dict[str, WindowStat] = {}
        self.clock_mhz: int | None = None
        self.last_move_s: float | None = None  # None: the target has not moved yet

    def due(self, now_s: float, every_s: float) -> bool:
        """True when the target may move: it never has, or last moved `every_s` ago."""
        return self.last_move_s is None or now_s - self.last_move_s >= every_s

    def learn(self, stats: dict[str, WindowStat]) -> None:
        """Take windows seen at default clocks as their stage's baseline."""
        for stage, stat in stats.items():
            if stat.count >= self.min_count:
                self.baseline[stage] = stat

    def step(
        self, now_s: float, limits: DeviceLimits, stats: dict[str, WindowStat], bound: float
    ) -> None:
        """Move the target by this window's latency against the baseline (see the class)."""
        # Back off when any stage is clearly over its bound; probe lower only when every
        # stage with enough observations is clearly under half of it (the hysteresis band).
        over = False
        under: bool | None = None
        for stage, stat in stats.items():
            base = self.baseline.get(stage)
            if base is None or base.mean_s <= 0 or stat.count < self.min_count:
                continue
            noise_s = (stat.stderr_s**2 + base.stderr_s**2) ** 0.5
            over = over or stat.mean_s - noise_s > base.mean_s * (1.0 + bound)
            clearly_under = stat.mean_s + noise_s < base.mean_s * (1.0 + 0.5 * bound)
            under = clearly_under if under is None else under and clearly_under
        if not over and not under:
            return
        current = self.clock_mhz if self.clock_mhz is not None else limits.default_max_mhz
        moved = limits.step(current, 4) if over else limits.step(current, -1)
        self.clock_mhz = None if moved >= limits.default_max_mhz else moved
        self.last_move_s = now_s


def build_strategy(settings: ControlSettings) -> Strategy:
    """The strategy object `settings.strategy` names, configured from `settings`."""
    kind = settings.strategy
    if kind is StrategyKind.TRI_SERVE:
        return TriServeStrategy(settings)
    if kind is StrategyKind.STATIC_CLOCK:
        assert settings.static_clock_mhz is not None
        return StaticClockStrategy(settings.static_clock_mhz)
    if kind is StrategyKind.POWER_CAP:
        assert settings.power_cap_w is not None
        return PowerCapStrategy(settings.power_cap_w)
    if kind is StrategyKind.SLO_DVFS:
        return SloDvfsStrategy(settings.max_latency_increase_pct)
    if kind is StrategyKind.PHASE_DVFS:
        return PhaseDvfsStrategy(settings.max_latency_increase_pct)
    return DefaultStrategy()
