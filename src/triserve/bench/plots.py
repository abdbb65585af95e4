"""Bench plots (matplotlib, Agg backend): energy vs p99 latency, and per-GPU timelines.

Called by `triserve.bench.cli` for ``--plots DIR``. matplotlib is imported lazily so the
bench runs (and prints its table) without it; a missing matplotlib is reported as an
actionable error by the CLI.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from triserve.bench.results import StrategyResult

_PHASE_COLOURS = {
    "prefill": "#f4a582",
    "decode": "#92c5de",
    "oneshot": "#b2abd2",
    "stall": "#dddddd",
}


@dataclass(slots=True)
class Timeline:
    """Per-tick trace of one GPU: time, SM clock, power, temperature and running phase."""

    gpu_index: int
    stages: str
    t_s: list[float] = field(default_factory=list)
    clock_mhz: list[int] = field(default_factory=list)
    power_w: list[float] = field(default_factory=list)
    temperature_c: list[float] = field(default_factory=list)
    phase: list[str] = field(default_factory=list)

    def add(self, t_s: float, clock_mhz: int, power_w: float, temp_c: float, phase: str) -> None:
        """Append one tick."""
        self.t_s.append(t_s)
        self.clock_mhz.append(clock_mhz)
        self.power_w.append(power_w)
        self.temperature_c.append(temp_c)
        self.phase.append(phase)


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: Marker per strategy row, cycled: points are told apart by marker and colour, not by text.
_MARKERS = "osD^v<>ph*XP"

#: Y-axis series of a timeline panel: (attribute, label).
_SERIES = (
    ("clock_mhz", "SM clock (MHz)"),
    ("power_w", "power (W)"),
    ("temperature_c", "temperature (°C)"),
)


def plot_energy_latency(
    scenario: str,
    results: Sequence[StrategyResult],
    out: Path,
    window_s: tuple[float, float] | None = None,
) -> Path:
    """Scatter of total energy vs p99 end-to-end latency, one point per strategy.

    Strategies are named in a legend beside the axes, never as text next to the points,
    which overlapped wherever two rows landed close together.
    """
    plt: Any = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5))
    for i, r in enumerate(results):
        ax.scatter(
            r.p99_e2e_s,
            r.energy_j / 1000.0,
            s=50,
            marker=_MARKERS[i % len(_MARKERS)],
            label=f"{r.strategy} ({r.energy_j / 1000.0:,.1f} kJ, {r.p99_e2e_s:.2f} s)",
        )
    ax.set_xlabel("p99 end-to-end latency (s)")
    ax.set_ylabel("energy (kJ)")
    measured = f", measured {window_s[0]:g}-{window_s[1]:g} s" if window_s else ""
    ax.set_title(f"{scenario}: energy vs p99 latency{measured}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, borderaxespad=0)
    path = out / f"{scenario}-energy-vs-p99.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def shared_limits(runs: Iterable[Mapping[int, Timeline]]) -> dict[str, tuple[float, float]]:
    """One y-range per series over every strategy's timelines, so panels compare by eye."""
    limits: dict[str, tuple[float, float]] = {}
    for timelines in runs:
        for tl in timelines.values():
            for attr, _ in _SERIES:
                values = getattr(tl, attr)
                if not values:
                    continue
                lo, hi = limits.get(attr, (min(values), max(values)))
                limits[attr] = (min(lo, *values), max(hi, *values))
    return {
        attr: (lo - 0.05 * (hi - lo or 1.0), hi + 0.05 * (hi - lo or 1.0))
        for attr, (lo, hi) in limits.items()
    }


def _shade(ax: Any, tl: Timeline) -> None:
    """Shade each phase run from its first tick to the next run's first tick (no gaps)."""
    start = 0
    for i in range(1, len(tl.t_s) + 1):
        if i == len(tl.t_s) or tl.phase[i] != tl.phase[start]:
            colour = _PHASE_COLOURS.get(tl.phase[start])
            end = tl.t_s[i] if i < len(tl.t_s) else tl.t_s[-1]
            if colour is not None:
                ax.axvspan(tl.t_s[start], end, color=colour, alpha=0.5, lw=0)
            start = i


def plot_timelines(
    scenario: str,
    strategy: str,
    timelines: Mapping[int, Timeline],
    out: Path,
    limits: Mapping[str, tuple[float, float]] | None = None,
    window_s: tuple[float, float] | None = None,
) -> Path:
    """Clock, power and temperature of every GPU over the traced window, phases shaded.

    `limits` (from `shared_limits`) gives every strategy's PNG the same y-scales; the stall
    shading is the workload's own (the simulator's "waiting on upstream"), under every
    strategy, not what the controller believed.
    """
    plt: Any = _pyplot()
    n = max(len(timelines), 1)
    fig, axes = plt.subplots(3, n, figsize=(7 * n, 8), sharex=True, squeeze=False)
    for col, tl in enumerate(timelines.values()):
        for row, (attr, label) in enumerate(_SERIES):
            ax = axes[row][col]
            _shade(ax, tl)
            ax.plot(tl.t_s, getattr(tl, attr), lw=0.9, color="black")
            ax.set_ylabel(label)
            if limits and attr in limits:
                ax.set_ylim(*limits[attr])
            ax.grid(alpha=0.3)
        axes[0][col].set_title(f"GPU {tl.gpu_index} ({tl.stages})")
        axes[2][col].set_xlabel("seconds into the window")
    window = (
        f", simulated t = {window_s[0]:g}-{window_s[1]:g} s (after warm-up)" if window_s else ""
    )
    fig.suptitle(f"{scenario} under {strategy}{window}")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.5) for c in _PHASE_COLOURS.values()]
    names = ["stall (waiting on upstream)" if k == "stall" else k for k in _PHASE_COLOURS]
    # Below the panels, outside every axis: the legend never covers data.
    fig.legend(handles, names, loc="lower center", ncol=len(names), frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    path = out / f"{scenario}-{strategy}-timeline.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
