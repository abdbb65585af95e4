"""Bench plots (matplotlib, Agg backend): energy vs p99 latency, and per-GPU timelines.

Called by `triserve.bench.cli` for ``--plots DIR``. matplotlib is imported lazily so the
bench runs (and prints its table) without it; a missing matplotlib is reported as an
actionable error by the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def plot_energy_latency(scenario: str, results: Sequence[StrategyResult], out: Path) -> Path:
    """Scatter of total energy vs p99 end-to-end latency, one point per strategy."""
    plt: Any = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in results:
        ax.scatter(r.p99_e2e_s, r.energy_j / 1000.0, s=40)
        ax.annotate(r.strategy, (r.p99_e2e_s, r.energy_j / 1000.0), fontsize=8)
    ax.set_xlabel("p99 end-to-end latency (s)")
    ax.set_ylabel("energy (kJ)")
    ax.set_title(f"{scenario}: energy vs p99 latency")
    ax.grid(alpha=0.3)
    path = out / f"{scenario}-energy-vs-p99.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _shade(ax: Any, tl: Timeline) -> None:
    start = 0
    for i in range(1, len(tl.t_s) + 1):
        if i == len(tl.t_s) or tl.phase[i] != tl.phase[start]:
            colour = _PHASE_COLOURS.get(tl.phase[start])
            if colour is not None:
                ax.axvspan(tl.t_s[start], tl.t_s[i - 1], color=colour, alpha=0.5, lw=0)
            start = i


def plot_timelines(
    scenario: str, strategy: str, timelines: Mapping[int, Timeline], out: Path
) -> Path:
    """Clock, power and temperature of every GPU over the traced window, phases shaded."""
    plt: Any = _pyplot()
    n = max(len(timelines), 1)
    fig, axes = plt.subplots(3, n, figsize=(7 * n, 8), sharex=True, squeeze=False)
    for col, tl in enumerate(timelines.values()):
        series = (
            (tl.clock_mhz, "SM clock (MHz)"),
            (tl.power_w, "power (W)"),
            (tl.temperature_c, "temperature (°C)"),
        )
        for row, (values, label) in enumerate(series):
            ax = axes[row][col]
            _shade(ax, tl)
            ax.plot(tl.t_s, values, lw=0.9, color="black")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[0][col].set_title(f"GPU {tl.gpu_index} ({tl.stages}) - {strategy}")
        axes[2][col].set_xlabel("time (s)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.5) for c in _PHASE_COLOURS.values()]
    fig.legend(handles, list(_PHASE_COLOURS), loc="upper right")
    fig.tight_layout()
    path = out / f"{scenario}-{strategy}-timeline.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
