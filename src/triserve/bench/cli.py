"""`triserve bench`: scenarios x strategies on the simulator, as a table, JSON and plots.

Dispatched by `triserve.cli` as ``main(argv)``. Every strategy of a scenario replays the same
seed and arrivals (a paired comparison); runs go to worker processes (``--jobs``). Rows
``static-best`` and ``power-cap-best`` are offline sweeps reduced to the setting with the
lowest energy per token whose p99 end-to-end latency stays within +1% of default's.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from triserve.bench.catalog import STRATEGIES, pick_best, spec_for, sweep_specs
from triserve.bench.results import StrategyResult, markdown_table, to_json, with_gains, write_json
from triserve.bench.runner import RunOutput, StrategySpec, run_strategy
from triserve.sim import Scenario, ScenarioError, load_scenario

#: Length of the per-GPU timeline plotted with ``--plots``, in seconds after warm-up.
TIMELINE_S = 30.0


class _Inline(Executor):
    """Runs submissions in this process (``--jobs 1``; also easier to profile)."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        fut.set_result(fn(*args, **kwargs))
        return fut


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="triserve bench",
        description="Run scenarios x strategies on the simulated GPUs and compare energy.",
    )
    p.add_argument(
        "--scenario",
        action="append",
        default=None,
        help="bundled scenario name (reference, bursty, hot, a100, l40s, …) or a YAML path; "
        "repeat for several (default: reference)",
    )
    p.add_argument(
        "--strategies",
        default=",".join(STRATEGIES),
        help=f"comma-separated subset of: {', '.join(STRATEGIES)}",
    )
    p.add_argument("--seed", type=int, default=0, help="simulation seed (same for every row)")
    p.add_argument("--duration-s", type=float, default=None, help="override scenario duration")
    p.add_argument("--warmup-s", type=float, default=None, help="override scenario warm-up")
    p.add_argument("--json", type=Path, default=None, help="write results as JSON to FILE")
    p.add_argument("--plots", type=Path, default=None, help="write PNG plots into DIR")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    return p


def _selected(raw: str) -> list[str]:
    names = [s.strip() for s in raw.split(",") if s.strip()]
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise ValueError(
            f"--strategies: unknown {', '.join(unknown)}; choose from {', '.join(STRATEGIES)}"
        )
    if not names:
        raise ValueError("--strategies is empty; name at least one strategy")
    return names


def run_scenario(
    scenario: Scenario, names: Sequence[str], seed: int, pool: Executor, trace: bool
) -> tuple[list[StrategyResult], dict[str, RunOutput]]:
    """All selected rows of one scenario (sweeps reduced to their best setting)."""
    window = (scenario.warmup_s, scenario.warmup_s + TIMELINE_S) if trace else None
    wanted = list(names)
    if any(n.endswith("-best") for n in wanted) and "default" not in wanted:
        wanted.insert(0, "default")  # the sweeps select relative to default
    jobs: dict[str, list[tuple[StrategySpec, Future[RunOutput]]]] = {}
    for name in wanted:
        specs = sweep_specs(name) if name.endswith("-best") else [spec_for(name)]
        jobs[name] = [(s, pool.submit(run_strategy, scenario, s, seed, window)) for s in specs]
    outputs: dict[str, RunOutput] = {}
    for name, futs in jobs.items():
        runs = [f.result() for _, f in futs]
        if len(runs) == 1:
            outputs[name] = runs[0]
    for name, futs in jobs.items():
        if name in outputs:
            continue
        runs = [f.result() for _, f in futs]
        best = pick_best(outputs["default"].result, [r.result for r in runs])
        outputs[name] = next(r for r in runs if r.result is best)
    ordered = [outputs[n].result for n in wanted if n in names or n == "default"]
    return with_gains(ordered), outputs


def _plot(
    scenario: str, results: list[StrategyResult], outputs: dict[str, RunOutput], out: Path
) -> None:
    from triserve.bench.plots import plot_energy_latency, plot_timelines

    out.mkdir(parents=True, exist_ok=True)
    plot_energy_latency(scenario, results, out)
    for name, run in outputs.items():
        if run.timelines:
            plot_timelines(scenario, name, run.timelines, out)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``triserve bench``; returns the process exit code."""
    args = _parser().parse_args(list(argv) if argv is not None else None)
    try:
        names = _selected(args.strategies)
        scenarios = [load_scenario(s) for s in (args.scenario or ["reference"])]
    except (ValueError, ScenarioError) as exc:
        print(f"triserve bench: {exc}", file=sys.stderr)
        return 2
    overrides = {
        k: v
        for k, v in (("duration_s", args.duration_s), ("warmup_s", args.warmup_s))
        if v is not None
    }
    scenarios = [s.model_copy(update=overrides) for s in scenarios]
    bad = [s.name for s in scenarios if s.duration_s <= s.warmup_s]
    if bad:
        print(f"triserve bench: duration must exceed warm-up ({', '.join(bad)})", file=sys.stderr)
        return 2
    if args.plots is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("triserve bench: --plots needs matplotlib; pip install 'triserve[bench]'")
            return 2
    pool: Executor = ProcessPoolExecutor(args.jobs) if args.jobs > 1 else _Inline()
    docs = []
    with pool:
        for scenario in scenarios:
            results, outputs = run_scenario(
                scenario, names, args.seed, pool, trace=args.plots is not None
            )
            print(markdown_table(scenario.name, results))
            print()
            docs.append(to_json(scenario.name, results))
            if args.plots is not None:
                _plot(scenario.name, results, outputs, args.plots)
    if args.json is not None:
        write_json(args.json, docs)
    return 0
