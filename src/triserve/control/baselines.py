"""Baseline strategies Tri-serve is measured against, and the strategy factory.

- `DefaultStrategy`: the PMU's auto-boost, no control at all.
- `StaticClockStrategy`: one locked SM clock, always.
- `PowerCapStrategy`: one power limit, clocks left to the PMU under it.
- `SloDvfsStrategy`: feedback DVFS in the style of throttLL'eM / GreenLLM — walks one
  GPU-wide clock down while windowed inter-token latency (TBT) stays under
  ``baseline x (1 + bound)`` within its noise, and up when it does not; it knows nothing
  of stages, stalls, A.I. or temperature.

`build_strategy(settings)` picks the strategy a policy names; the node agent and the bench
both go through it (the bench adds its oracle, which lives in `triserve.bench`).
"""

from __future__ import annotations

from triserve.control.decisions import Decision, Reason, Strategy, TickContext
from triserve.control.latency import LatencyTracker, WindowStat
from triserve.control.settings import ControlSettings, StrategyKind
from triserve.control.triserve import TriServeStrategy


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
        self._last_move_s = -1e9

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
        if worst is not None and ctx.now_s - self._last_move_s >= 1.0:
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
    return DefaultStrategy()
