"""`triserve bench`: the table, the JSON document and the plots, on a short scenario."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from triserve import cli
from triserve.bench.catalog import pick_best
from triserve.bench.results import StrategyResult

SHORT = ["--scenario", "reference", "--duration-s", "45", "--warmup-s", "5", "--jobs", "1"]


def test_bench_writes_the_table_and_the_json_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.json"
    argv = ["bench", *SHORT, "--strategies", "default,tri-serve,oracle", "--json", str(out)]
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    assert "| tri-serve |" in table and "| oracle |" in table and "p99 e2e" in table
    doc = json.loads(out.read_text())
    assert doc["scenario"] == "reference"
    rows = {r["strategy"]: r for r in doc["results"]}
    assert set(rows) == {"default", "tri-serve", "oracle"}
    for row in rows.values():
        for key, kind in (
            ("energy_j", float),
            ("requests_per_j", float),
            ("tokens_per_j", float),
            ("efficiency_gain_pct", float),
            ("p99_e2e_s", float),
            ("p99_ttft_s", float),
            ("throughput_rps", float),
        ):
            assert isinstance(row[key], kind), key
    assert rows["default"]["efficiency_gain_pct"] == 0.0
    assert rows["tri-serve"]["energy_j"] < rows["default"]["energy_j"]


def test_bench_sweeps_pick_a_setting_and_plots_are_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plots = tmp_path / "plots"
    argv = ["bench", *SHORT, "--strategies", "static-best,tri-serve", "--plots", str(plots)]
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    assert "| static-best |" in table and "x boost clock" in table
    assert "| default |" in table  # sweeps are judged against default
    names = {p.name for p in plots.iterdir()}
    assert "reference-energy-vs-p99.png" in names
    assert "reference-tri-serve-timeline.png" in names


def test_bench_refuses_unknown_strategies_and_scenarios(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["bench", "--strategies", "turbo"]) == 2
    assert "unknown turbo" in capsys.readouterr().err
    assert cli.main(["bench", "--scenario", "no-such-scenario"]) == 2
    assert "not found" in capsys.readouterr().err


def _row(name: str, energy_j: float, p99_s: float) -> StrategyResult:
    return StrategyResult(name, energy_j, 10, 1000.0, 60.0, 0.1, 0.2, 1.0, p99_s, 0.2, 0.0, 0.0)


def test_the_best_sweep_setting_is_the_cheapest_within_the_latency_bound() -> None:
    default = _row("default", 100.0, 10.0)
    fast_but_costly = _row("static-best", 95.0, 10.0)
    cheap_and_ok = _row("static-best", 80.0, 10.09)
    cheapest_but_slow = _row("static-best", 60.0, 10.5)
    best = pick_best(default, [fast_but_costly, cheap_and_ok, cheapest_but_slow])
    assert best is cheap_and_ok
