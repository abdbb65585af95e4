"""Bench plots a reader can trust: the workload's own stalls under every strategy, shared scales."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.bench.scenarios import short_reference
from triserve.bench.catalog import spec_for
from triserve.bench.plots import Timeline, plot_energy_latency, plot_timelines, shared_limits
from triserve.bench.runner import run_strategy


def test_stalls_are_labelled_from_the_workload_under_the_default_too() -> None:
    scenario = short_reference(duration_s=60.0, warmup_s=10.0)
    run = run_strategy(scenario, spec_for("default"), 0, (10.0, 60.0))
    phases = {p for tl in run.timelines.values() for p in tl.phase}
    # The default never decides "stall"; the label comes from the simulated pipeline itself.
    assert "stall" in phases


def _timeline(clock_mhz: int, power_w: float) -> Timeline:
    tl = Timeline(0, "thinker")
    for i in range(5):
        tl.add(float(i), clock_mhz, power_w, 40.0 + i, "decode" if i % 2 else "stall")
    return tl


def test_shared_limits_cover_every_strategy() -> None:
    limits = shared_limits([{0: _timeline(1980, 700.0)}, {0: _timeline(345, 75.0)}])
    lo, hi = limits["clock_mhz"]
    assert lo < 345 and hi > 1980
    assert limits["power_w"][0] < 75.0 < 700.0 < limits["power_w"][1]


def test_timeline_png_uses_the_shared_scale_and_names_the_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    seen: dict[str, object] = {}
    real_savefig = matplotlib.figure.Figure.savefig

    def capture(fig: matplotlib.figure.Figure, *args: Any, **kwargs: Any) -> None:
        seen["ylim"] = fig.axes[0].get_ylim()
        seen["title"] = fig.get_suptitle()
        real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", capture)
    runs = [{0: _timeline(1980, 700.0)}, {0: _timeline(345, 75.0)}]
    limits = shared_limits(runs)
    path = plot_timelines("ref", "default", runs[1], tmp_path, limits, (60.0, 90.0))
    assert path.exists()
    assert seen["ylim"] == pytest.approx(limits["clock_mhz"])
    assert "60-90 s" in str(seen["title"])


def test_energy_plot_names_strategies_in_a_legend_beside_the_axes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    seen: dict[str, object] = {}
    real_savefig = matplotlib.figure.Figure.savefig

    def capture(fig: matplotlib.figure.Figure, *args: Any, **kwargs: Any) -> None:
        ax = fig.axes[0]
        fig.canvas.draw()
        seen["texts"] = len(ax.texts)
        legend = ax.get_legend()
        assert legend is not None, "the energy plot has no legend"
        seen["legend_x0"] = legend.get_window_extent().x0
        seen["axes_x1"] = ax.get_window_extent().x1
        seen["title"] = ax.get_title()
        real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", capture)
    scenario = short_reference(duration_s=40.0, warmup_s=10.0)
    rows = [run_strategy(scenario, spec_for(n), 0, None).result for n in ("default", "tri-serve")]
    assert plot_energy_latency("ref", rows, tmp_path, (10.0, 40.0)).exists()
    assert seen["texts"] == 0  # no labels next to points, which overlapped
    assert float(seen["legend_x0"]) > float(seen["axes_x1"])  # type: ignore[arg-type]
    assert "10-40 s" in str(seen["title"])
