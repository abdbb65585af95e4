"""Offline coordinate search over per-GPU settings, judged by the bench's latency rule.

Called by `triserve.bench.catalog` (static-best and power-cap-best, one setting per GPU) and
`triserve.bench.optimum` (the hindsight optimum, one clock per GPU and phase kind). A
*plan* maps each dimension (a GPU, or a GPU and a phase kind) to one level of a coarse grid;
`make_spec(plan)` turns it into a bench row. Every candidate is one `run_strategy` call on the
same scenario and seed as the ``default`` row, submitted to the bench's worker pool, and
cached by plan, so the number of simulations is bounded (`max_evals`) and reported.

The rule (`Bounds`): p99 end-to-end latency within +1% of default's and throughput within
-0.5%, for every searched row. Among plans that meet it, the one with the lowest energy per
generated token wins (per token rather than in total, so that a plan cannot "save" by
finishing less work). The search starts from the given plans (default's plan first, which
always meets the rule), then walks the dimensions in turn, trying every level of one while
the others stay fixed, and keeps a move only when it meets the rule and saves energy; it
stops after a pass that moved nothing, after `passes`, or when the budget is spent.

p99 TTFT is not part of the rule (the rows the searches are compared with are not held to
it either), but the best evaluated plan that also keeps p99 TTFT within +1% is kept as
`SearchOutcome.strict`, at no extra simulation, and the constraints that cheaper plans
broke are counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, replace

from triserve.bench.results import StrategyResult
from triserve.bench.runner import RunOutput, StrategySpec, run_strategy
from triserve.sim import Scenario

#: The rule with p99 TTFT added: what `SearchOutcome.strict` meets.
STRICT_TTFT_PCT = 1.0

#: One dimension's level per dimension, in a fixed order (hashable: the cache key).
Plan = tuple[tuple[Hashable, Hashable], ...]


@dataclass(frozen=True, slots=True)
class Bounds:
    """The selection rule, relative to the default row of the same seed (percent).

    `p99_ttft_pct` None leaves p99 TTFT out of the rule.
    """

    p99_e2e_pct: float = 1.0
    p99_ttft_pct: float | None = None
    throughput_loss_pct: float = 0.5

    def violations(self, default: StrategyResult, r: StrategyResult) -> tuple[str, ...]:
        """Names of the constraints `r` breaks (empty when it meets the rule)."""
        out = []
        if r.p99_e2e_s > default.p99_e2e_s * (1.0 + self.p99_e2e_pct / 100.0) + 1e-12:
            out.append("p99 e2e")
        ttft = self.p99_ttft_pct
        if ttft is not None and r.p99_ttft_s > default.p99_ttft_s * (1 + ttft / 100) + 1e-12:
            out.append("p99 TTFT")
        floor = default.throughput_rps * (1.0 - self.throughput_loss_pct / 100.0)
        if r.throughput_rps < floor - 1e-12:
            out.append("throughput")
        return tuple(out)


@dataclass(slots=True)
class SearchOutcome:
    """The chosen plan and its run, with what the search cost and what held it back.

    `binding` counts, per constraint, the evaluated plans that would have used less energy
    per token than the chosen one but broke that constraint (p99 TTFT counted too): the
    constraints that bound. `strict` is the best evaluated run that also kept p99 TTFT
    within +1% of default's (default's own run when no other did).
    """

    plan: Plan
    spec: StrategySpec
    run: RunOutput
    evaluations: int
    wall_s: float
    strict: RunOutput
    binding: dict[str, int] = field(default_factory=dict)


def coordinate_search(
    scenario: Scenario,
    seed: int,
    pool: Executor,
    default: RunOutput,
    default_plan: Plan,
    levels: Mapping[Hashable, Sequence[Hashable]],
    make_spec: Callable[[Plan], StrategySpec],
    *,
    starts: Sequence[Plan] = (),
    passes: int = 3,
    max_evals: int = 200,
    bounds: Bounds | None = None,
) -> SearchOutcome:
    """Search `levels` (one grid per dimension) from `default_plan`; see the module doc.

    `default_plan` must behave exactly like the ``default`` row (its run is reused, not
    repeated); `starts` are further plans tried first (the best that meets the rule wins).
    """
    started = time.perf_counter()
    rule = bounds or Bounds()
    base = default.result
    cache: dict[Plan, RunOutput] = {default_plan: default}
    evals = 0

    def run_all(plans: Sequence[Plan]) -> None:
        nonlocal evals
        todo = [p for p in dict.fromkeys(plans) if p not in cache]
        todo = todo[: max(max_evals - evals, 0)]
        futs: list[tuple[Plan, Future[RunOutput]]] = [
            (p, pool.submit(run_strategy, scenario, make_spec(p), seed, None)) for p in todo
        ]
        for p, f in futs:
            cache[p] = f.result()
        evals += len(futs)

    def better(p: Plan, than: Plan) -> bool:
        r = cache[p].result
        return not rule.violations(base, r) and r.tokens_per_j > cache[than].result.tokens_per_j

    def best_of(plans: Sequence[Plan], current: Plan) -> Plan:
        run_all(plans)
        for p in plans:
            if p in cache and better(p, current):
                current = p
        return current

    current = best_of(list(starts), default_plan)
    dims = [k for k, _ in default_plan]
    for _ in range(passes):
        before = current
        for dim in dims:
            if evals < max_evals:
                current = best_of([_with(current, dim, lv) for lv in levels[dim]], current)
        if current == before or evals >= max_evals:
            break
    best = cache[current].result
    strict_rule = replace(rule, p99_ttft_pct=STRICT_TTFT_PCT)
    binding: dict[str, int] = {}
    strict = default
    for run in cache.values():
        r = run.result
        broken = strict_rule.violations(base, r)
        if not broken and r.tokens_per_j > strict.result.tokens_per_j:
            strict = run
        if r.tokens_per_j > best.tokens_per_j:
            for name in broken:
                binding[name] = binding.get(name, 0) + 1
    wall_s = time.perf_counter() - started
    spec = make_spec(current)
    return SearchOutcome(current, spec, cache[current], evals, wall_s, strict, binding)


def _with(plan: Plan, dim: Hashable, level: Hashable) -> Plan:
    return tuple((k, level if k == dim else v) for k, v in plan)
