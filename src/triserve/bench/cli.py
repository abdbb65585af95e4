"""`triserve bench`: scenarios x strategies on the simulator, as a table, JSON and plots.

Dispatched by `triserve.cli` as ``main(argv)``. Every strategy of a scenario replays the
same seed and arrivals (a paired comparison); runs go to worker processes (``--jobs``). Rows
``static-best``, ``power-cap-best`` and the ``optimum`` rows are offline searches
(`triserve.bench.catalog.search_row`) on a seed no row is scored on, replayed on every
scored seed; how many simulations each took is printed under the table. ``--seeds N``
repeats a block on N seeds and adds the per-row mean and range; ``--idle-hold-s`` repeats
every scenario once per PMU boost hold, one block each.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from triserve import cliargs
from triserve.bench.catalog import (
    ROW_GROUPS,
    SEARCHED,
    SLO_OPTIMA,
    SLO_ROWS,
    STRATEGIES,
    optimum_bounds,
    search_row,
    slo_spec,
    spec_for,
)
from triserve.bench.results import StrategyResult, markdown_table, with_gains, write_json
from triserve.bench.runner import RunOutput, over_targets, run_strategy
from triserve.bench.search import SearchOutcome
from triserve.bench.seeds import aggregate, aggregate_table
from triserve.sim import Scenario, ScenarioError, load_scenario, with_overrides

#: Most seeds one run may ask for: every seed runs every row (1,000 is days of CPU already).
MAX_SEEDS = 1000

#: Length of the per-GPU timeline plotted with ``--plots``, in seconds after warm-up.
TIMELINE_S = 30.0


class _Inline(Executor):
    """Runs submissions in this process (``--jobs 1``; also easier to profile)."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        fut.set_result(fn(*args, **kwargs))
        return fut


def _parser() -> argparse.ArgumentParser:
    p = cliargs.parser(
        "triserve bench",
        "Run scenarios x strategies on the simulated GPUs, each strategy driving the\n"
        "production node agent on the same seed and arrivals, and compare energy, tokens per\n"
        "joule and latency (as a table, optionally JSON and PNG plots).",
    )
    p.add_argument(
        "--scenario",
        "--sim",
        dest="scenario",
        action="append",
        default=None,
        help="bundled scenario name (reference, bursty, hot, a100, l40s, …) or a YAML path; "
        "repeat for several (default: reference)",
    )
    p.add_argument(
        "--strategies",
        default=",".join(STRATEGIES),
        help="comma-separated rows to run, from: %(default)s; "
        f"{', '.join(ROW_GROUPS)} stand for all their rows (default: all of them; "
        "the default row always runs, as every change is relative to it)",
    )
    p.add_argument("--seed", type=int, default=0, help="first simulation seed (same for every row)")
    p.add_argument(
        "--seeds",
        type=cliargs.count_at_most(MAX_SEEDS),
        default=1,
        help="run seeds SEED..SEED+N-1 and add each row's mean and range over them",
    )
    p.add_argument(
        "--idle-hold-s",
        default=None,
        help="comma-separated PMU boost holds in seconds (e.g. 0.25,1.5,10): one block each, "
        "overriding the scenario's pmu.idle_hold_s, the hold before an idle GPU drops its "
        "clock where perf boost is off (default: the scenario's)",
    )
    p.add_argument(
        "--parked-share",
        default=None,
        help="comma-separated shares (0 to about 0.6) of the context's idle premium that a GPU "
        "locked at a low clock keeps (pmu.parked_share, not published): one block each "
        "(default: the scenario's)",
    )
    p.add_argument(
        "--decode-share",
        default=None,
        help="comma-separated clock-sensitive shares of a batch-1 decode step (e.g. "
        "0.015,0.03,0.05; the published band is about 0.012-0.06, docs/calibration.md), set on "
        "every decode stage: one block each (default: the scenario's)",
    )
    p.add_argument(
        "--duration-s",
        "--duration",
        dest="duration_s",
        type=cliargs.positive_float,
        default=None,
        help="simulated seconds per run (default: the scenario's duration_s)",
    )
    p.add_argument(
        "--warmup-s",
        type=cliargs.non_negative_float,
        default=None,
        help="seconds before measuring (default: the scenario's warmup_s)",
    )
    p.add_argument("--json", type=Path, default=None, help="write results as JSON to this file")
    p.add_argument(
        "--summary",
        type=Path,
        nargs="+",
        metavar="JSON",
        default=None,
        help="print one table (every block and row, mean [min, max] over seeds, guard trips) "
        "of these `--json` files and exit; simulates nothing",
    )
    p.add_argument("--plots", type=Path, default=None, help="write PNG plots into this folder")
    p.add_argument(
        "--jobs",
        type=cliargs.positive_int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes",
    )
    p.add_argument(
        "--scenario-schema",
        action="store_true",
        help="print the scenario file format (fields, defaults, GPU profiles) and exit",
    )
    return p


def _selected(raw: str) -> list[str]:
    names = [s.strip() for s in raw.split(",") if s.strip()]
    names = list(dict.fromkeys(m for n in names for m in ROW_GROUPS.get(n, (n,))))
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise ValueError(
            f"--strategies: unknown {', '.join(unknown)}; choose from {', '.join(STRATEGIES)}"
        )
    if not names:
        raise ValueError("--strategies is empty; name at least one strategy")
    return names


@dataclass(slots=True)
class ScenarioRun:
    """One seed of one block: the rows, their runs and the searches behind searched rows."""

    results: list[StrategyResult]
    outputs: dict[str, RunOutput]
    searches: dict[str, SearchOutcome]
    #: SLO rows: the default row's own share over the same targets, percent.
    default_over: dict[str, float | None] = field(default_factory=dict)
    #: The seed the searched rows' plans were chosen on.
    search_seed: int | None = None

    def notes(self) -> list[str]:
        """One line per search (where, cost, binding constraints) and SLO row."""
        out: list[str] = []
        for r in self.results:
            if r.strategy in self.default_over:
                mine, theirs = r.over_target_pct, self.default_over[r.strategy]
                out.append(
                    f"{r.strategy}: {r.setting}; requests over target {_pct(mine)} "
                    f"(default on the same targets {_pct(theirs)}), {r.slo_guard_trips} "
                    "guard trips."
                )
        for name, s in self.searches.items():
            bound = ", ".join(f"{k} ({v} cheaper plans broke it)" for k, v in s.binding.items())
            out.append(
                f"{name}: plan chosen on seed {self.search_seed} (not scored) by "
                f"{s.evaluations} simulations, {s.wall_s:.0f} s wall; bound by: "
                f"{bound or 'nothing (grid exhausted)'}."
            )
        return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


#: Searched rows pick their plan on the block's first seed plus this offset, a seed no row is
#: scored on (as a user tunes a setting on past traffic, then runs it), and replay it on every
#: scored seed.
SEARCH_SEED_OFFSET = 20_000


def run_scenario(
    scenario: Scenario,
    names: Sequence[str],
    seed: int,
    pool: Executor,
    trace: bool,
    found: dict[str, SearchOutcome] | None = None,
    search_seed: int | None = None,
) -> ScenarioRun:
    """All selected rows of one scenario on one seed.

    Searched rows are searched on `search_seed` (default: `seed` + `SEARCH_SEED_OFFSET`)
    unless `found` already holds their outcome (a block's later seeds reuse its first
    search), then replayed on `seed`; an optimum row is then the best of its replay and
    every other row that keeps its rule on `seed` (`_upper_bound`).
    """
    window = (scenario.warmup_s, scenario.warmup_s + TIMELINE_S) if trace else None
    wanted = list(names)
    if "default" not in wanted:
        wanted.insert(0, "default")  # every change (and every search) is relative to default
    found = {} if found is None else found
    futs: dict[str, Future[RunOutput]] = {
        n: pool.submit(run_strategy, scenario, spec_for(n), seed, window)
        for n in wanted
        if n not in SEARCHED and n not in SLO_ROWS
    }
    outputs: dict[str, RunOutput] = {}
    default_over: dict[str, float | None] = {}
    slo = [n for n in wanted if n in SLO_ROWS]
    if slo:
        default = futs["default"].result()
        specs = {n: slo_spec(n, scenario, default) for n in slo}
        futs.update({n: pool.submit(run_strategy, scenario, specs[n], seed, window) for n in slo})
        default_over = {
            n: over_targets(default.ttft_s, default.e2e_s, specs[n].settings.slo_targets)
            for n in slo
        }
    searched = [n for n in wanted if n in SEARCHED]
    missing = [n for n in searched if n not in found]
    if missing:
        held = seed + SEARCH_SEED_OFFSET if search_seed is None else search_seed
        held_default = run_strategy(scenario, spec_for("default"), held, None)
        # Searches wait on their own simulations; threads let them share the worker pool.
        with ThreadPoolExecutor(len(missing)) as threads:
            done = {
                n: threads.submit(search_row, n, scenario, held, pool, held_default)
                for n in missing
            }
            found.update({n: f.result() for n, f in done.items()})
    searches = {n: found[n] for n in searched}
    futs.update(
        {n: pool.submit(run_strategy, scenario, searches[n].spec, seed, window) for n in searched}
    )
    outputs.update({n: f.result() for n, f in futs.items()})
    # A replayed plan's spec carries the search's own label (``optimum``): each searched row
    # keeps its name here, as the optimum-slo rows must to be told apart.
    results = {
        n: replace(outputs[n].result, strategy=n) if n in searched else outputs[n].result
        for n in wanted
    }
    for n in searched:
        if n == "optimum" or n in SLO_OPTIMA:
            chosen, results[n] = _upper_bound(n, results)
            if n in SLO_OPTIMA:
                row = slo_spec(_slo_row_of(n), scenario, outputs["default"])
                out = outputs[chosen]
                over = over_targets(out.ttft_s, out.e2e_s, row.settings.slo_targets)
                results[n] = replace(results[n], over_target_pct=over)
    ordered = [results[n] for n in wanted]
    held = seed + SEARCH_SEED_OFFSET if search_seed is None else search_seed
    return ScenarioRun(with_gains(ordered), outputs, searches, default_over, held)


def _slo_row_of(optimum: str) -> str:
    return "tri-serve-slo-" + optimum.removeprefix("optimum-slo-")


def _upper_bound(name: str, results: dict[str, StrategyResult]) -> tuple[str, StrategyResult]:
    """Optimum row `name` on this seed: its replay, or a better row that keeps its rule.

    The plan was chosen on another seed; where a row keeps the same rule on this seed and
    uses less energy per token, or the replay breaks the rule here, the optimum is that row
    (the best one; default, which always keeps it, at worst), labelled as such. Returns the
    row taken and the optimum's result.
    """
    rule = optimum_bounds(name)
    base = results["default"]
    mine = results[name]
    broke = rule.violations(base, mine)
    keeps = [
        (n, r)
        for n, r in results.items()
        if not n.startswith("optimum") and not rule.violations(base, r)
    ]
    other, best = max(keeps, key=lambda kv: kv[1].tokens_per_j)
    if not broke and mine.tokens_per_j >= best.tokens_per_j:
        return name, mine
    why = f"the plan broke {', '.join(broke)} here" if broke else "it saves more here"
    setting = f"= {other} on this seed ({why}; plan: {mine.setting})"
    return other, replace(best, strategy=name, setting=setting)


def _floats(
    raw: str | None, flag: str, what: str, example: str, valid: Callable[[float], bool]
) -> list[float | None]:
    """A sweep flag's comma-separated values ([None]: the scenario's own); ValueError names it."""
    if raw is None:
        return [None]
    try:
        values = [float(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        msg = f"{flag}: {raw!r} is not a comma-separated list of {what}, e.g. {example}"
        raise ValueError(msg) from None
    if not values or not all(valid(v) for v in values):
        raise ValueError(f"{flag} needs one or more {what}, e.g. {example}")
    return list(values)


def _holds(raw: str | None) -> list[float | None]:
    return _floats(raw, "--idle-hold-s", "holds of 0 s or more", "0.25,1.5,10", lambda h: h >= 0)


def _shares(raw: str | None, flag: str, example: str) -> list[float | None]:
    return _floats(raw, flag, "shares from 0 to below 1", example, lambda x: 0 <= x < 1)


def with_pmu(
    scenario: Scenario,
    hold_s: float | None,
    parked_share: float | None,
    decode_share: float | None = None,
) -> Scenario:
    """`scenario` with the idle hold, parked share and decode clock share replaced if given."""
    overrides: dict[str, Any] = {}
    if hold_s is not None:
        overrides["pmu.idle_hold_s"] = hold_s
    if parked_share is not None:
        overrides["pmu.parked_share"] = parked_share
    if decode_share is not None:
        for i, stage in enumerate(scenario.pipeline.stages):
            if stage.decode is not None:
                overrides[f"pipeline.stages.{i}.decode.clock_sensitive_share"] = decode_share
    return with_overrides(scenario, overrides) if overrides else scenario


def _decode_share(scenario: Scenario) -> float | None:
    """The decode stages' clock-sensitive share when they all have one value."""
    values = {s.decode.clock_sensitive_share for s in scenario.pipeline.stages if s.decode}
    return values.pop() if len(values) == 1 else None


def run_block(
    scenario: Scenario,
    names: Sequence[str],
    seeds: Sequence[int],
    pool: Executor,
    plots: Path | None,
) -> dict[str, Any]:
    """Every seed of one scenario variant: print its tables, return its JSON document."""
    pmu = scenario.pmu
    decode = _decode_share(scenario)
    title = (
        f"{scenario.name} (parked share {pmu.parked_share:g}, idle hold {pmu.idle_hold_s:g} s"
        f"{'' if decode is None else f', decode share {decode:g}'})"
    )
    per_seed: list[dict[str, Any]] = []
    rows_by_seed: list[list[StrategyResult]] = []
    found: dict[str, SearchOutcome] = {}
    search_seed = seeds[0] + SEARCH_SEED_OFFSET
    for seed in seeds:
        run = run_scenario(
            scenario, names, seed, pool, plots is not None, found, search_seed=search_seed
        )
        print(markdown_table(f"{title}, seed {seed}", run.results, run.notes()))
        print()
        per_seed.append(
            {
                "seed": seed,
                "results": [r.to_dict() for r in run.results],
                "searches": {
                    n: {
                        "setting": s.spec.setting,
                        "selected_on_seed": search_seed,
                        "simulations": s.evaluations,
                        "wall_s": round(s.wall_s, 1),
                        "binding": s.binding,
                    }
                    for n, s in run.searches.items()
                },
            }
        )
        rows_by_seed.append(run.results)
        if plots is not None and seed == seeds[0]:
            _plot(scenario, run.results, run.outputs, plots)
    rows = aggregate(rows_by_seed)
    if len(seeds) > 1:
        print(aggregate_table(title, rows))
        print()
    return {
        "scenario": scenario.name,
        "idle_hold_s": scenario.pmu.idle_hold_s,
        "parked_share": scenario.pmu.parked_share,
        "decode_share": _decode_share(scenario),
        "seeds": list(seeds),
        "results": per_seed[0]["results"],
        "per_seed": per_seed,
        "aggregate": [r.to_dict() for r in rows],
        "spread": "min-max over seeds",
    }


def _plot(
    scenario: Scenario,
    results: list[StrategyResult],
    outputs: dict[str, RunOutput],
    out: Path,
) -> None:
    from triserve.bench.plots import plot_energy_latency, plot_timelines, shared_limits

    out.mkdir(parents=True, exist_ok=True)
    measured = (scenario.warmup_s, scenario.duration_s)
    plot_energy_latency(scenario.name, results, out, measured)
    traced = {n: run.timelines for n, run in outputs.items() if run.timelines}
    limits = shared_limits(traced.values())
    window = (scenario.warmup_s, min(scenario.warmup_s + TIMELINE_S, scenario.duration_s))
    for name, timelines in traced.items():
        plot_timelines(scenario.name, name, timelines, out, limits, window)


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse unwritable outputs before hours of simulation, not after."""
    if args.json is not None:
        cliargs.writable_file(args.json, "--json")
    if args.plots is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise cliargs.UserError(
                "--plots needs matplotlib: pip install 'triserve[bench]'"
            ) from None
        cliargs.writable_dir(args.plots, "--plots")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``triserve bench``; returns the process exit code."""
    args = _parser().parse_args(list(argv) if argv is not None else None)
    if args.scenario_schema:
        from triserve.bench.scenario_doc import scenario_reference

        print(scenario_reference(), end="")
        return 0
    if args.summary is not None:
        from triserve.bench.summary import SummaryError, load_blocks, summary_table

        try:
            print(summary_table(load_blocks(args.summary)))
        except SummaryError as exc:
            return cliargs.fail("triserve bench --summary", str(exc))
        return 0
    try:
        names = _selected(args.strategies)
        holds = _holds(args.idle_hold_s)
        shares = _shares(args.parked_share, "--parked-share", "0,0.35,0.6")
        decode_shares = _shares(args.decode_share, "--decode-share", "0.015,0.03,0.05")
        scenarios = [load_scenario(s) for s in (args.scenario or ["reference"])]
        _check_outputs(args)
    except (ValueError, ScenarioError, cliargs.UserError) as exc:
        return cliargs.fail("triserve bench", " ".join(str(exc).split()))
    overrides = {
        k: v
        for k, v in (("duration_s", args.duration_s), ("warmup_s", args.warmup_s))
        if v is not None
    }
    scenarios = [s.model_copy(update=overrides) for s in scenarios]
    bad = [
        f"{s.name}: {s.duration_s:g} s <= {s.warmup_s:g} s"
        for s in scenarios
        if s.duration_s <= s.warmup_s
    ]
    if bad:
        return cliargs.fail(
            "triserve bench",
            f"--duration-s must exceed the warm-up ({'; '.join(bad)}); raise --duration-s "
            "or lower --warmup-s",
        )
    seeds = list(range(args.seed, args.seed + args.seeds))
    pool: Executor = ProcessPoolExecutor(args.jobs) if args.jobs > 1 else _Inline()
    docs = []
    with pool:
        for scenario in scenarios:
            variants = [
                (share, hold, decode)
                for share in shares
                for hold in holds
                for decode in decode_shares
            ]
            for share, hold, decode in variants:
                try:
                    variant = with_pmu(scenario, hold, share, decode)
                except ScenarioError as exc:
                    return cliargs.fail("triserve bench", " ".join(str(exc).split()))
                docs.append(run_block(variant, names, seeds, pool, args.plots))
    if args.json is not None:
        write_json(args.json, docs)
    return 0
