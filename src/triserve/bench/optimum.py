"""ORACLE ONLY: the hindsight optimum — the bench's upper bound on any clock controller.

!!! Offline, with full future knowledge. No production controller can do this. !!!
`OptimumStrategy` reads simulator internals: the phase each GPU runs right now
(``sim.gpus[g].phase``) and, while a GPU is idle, when its next work is due and of which kind
(``sim.oracle_view()``, to pre-warm exactly in time). It follows a *plan*: one clock per GPU
and phase kind (``prefill``, ``decode``, ``oneshot``, ``idle``), each a fraction of the GPU's
boost clock (1.0 = hand the clock to the PMU) or ``no-loss`` (per phase, the lowest clock
whose round time is within 0.5% of boost on the exact kernels, not below 0.35 x boost: a
phase that starts between ticks runs at the lock until the next tick). A GPU whose stages
feed a stage on another GPU also gets a ``slack`` level: a ceiling on its busy clocks while
that downstream stage has requests queued (read from the simulated engines' queues), so the
optimum can take the cross-GPU slack that component P (`triserve.control.pipeline`) takes
online; 1.0 means no ceiling.

`search_optimum` finds the plan offline, by coordinate descent (`triserve.bench.search`) on
the very seed it is reported on: the least energy per token with p99 end-to-end latency
within +1% of the ``default`` row and throughput within -0.5% (p99 TTFT is reported, and the
best plan that also keeps it within +1% is printed beside it). Unlike the `lookahead` row
it is not bound to Tri-serve's per-phase no-loss rule: it may trade latency for energy in
any phase kind wherever the end-to-end tail allows. It acts on the
bench's control tick like every row, so a phase that starts between ticks runs one tick at
the previous lock: the optimum over tick-granular per-phase-kind clocks, not over all
conceivable controllers. The search starts from default, from the lookahead-like plan
(every busy kind ``no-loss``, idle at the lowest clock) and from uniform plans (one fraction
of boost for every kind of every GPU, as a static lock), so it is never worse than any of
them when they meet the rule.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from concurrent.futures import Executor
from functools import partial

from triserve.bench.lookahead import HORIZON_S, no_loss_clock_mhz
from triserve.bench.runner import RunOutput, StrategySpec
from triserve.bench.search import Bounds, Plan, SearchOutcome, coordinate_search
from triserve.control import ControlSettings, Decision, Reason, StrategyKind, TickContext
from triserve.sim import ORACLE_WARNING, Phase, Scenario, Simulation
from triserve.sim.engines import ArEngine, OneshotEngine

#: The phase kinds a plan sets a clock for ("idle" covers idle and stalled).
KINDS: tuple[str, ...] = ("prefill", "decode", "oneshot", "idle")
#: The level that asks for each phase's exact no-loss clock.
NO_LOSS = "no-loss"
#: Clock levels per busy kind: fractions of the boost clock, and the per-phase no-loss clock.
BUSY_LEVELS: tuple[float | str, ...] = (0.35, 0.45, 0.55, 0.65, 0.7, 0.8, 0.9, 1.0, NO_LOSS)
#: Lowest no-loss clock, as a fraction of boost (Tri-serve's default ridge floor).
NO_LOSS_FLOOR = 0.35
#: Clock levels while idle (0.0 = the lowest supported clock; 1.0 = the PMU's own idle).
IDLE_LEVELS: tuple[float | str, ...] = (0.0, 0.2, 0.35, 0.5, 0.65, 0.7, 0.8, 0.9, 1.0)
#: Uniform plans tried as start points: every kind of every GPU at one fraction of boost, as
#: a static clock lock does (the ``static-best`` row's uniform settings), so the optimum is
#: never worse than the best of them where it meets the rule.
UNIFORM_STARTS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
#: Ceilings on a GPU's busy clocks while a downstream stage on another GPU has a queue.
SLACK = "slack"
SLACK_LEVELS: tuple[float | str, ...] = (0.45, 0.55, 0.65, 0.8, 0.9, 1.0)
#: Passes of coordinate descent, and the most simulations one search may run.
PASSES = 3
MAX_EVALS = 100


class OptimumStrategy:
    """ORACLE ONLY — one GPU's clocks by phase kind, from a plan found in hindsight."""

    name = "optimum"
    warning = ORACLE_WARNING

    def __init__(self, sim: Simulation, gpu_index: int, levels: Mapping[str, float | str]) -> None:
        self.sim = sim
        self.gpu_index = gpu_index
        self.levels = dict(levels)
        self._no_loss: dict[Phase, int] = {}
        self._feeds = [
            e.downstream
            for e in sim.engines
            if e.spec.gpu == gpu_index
            and e.downstream is not None
            and e.downstream.spec.gpu != gpu_index
        ]

    def decide(self, ctx: TickContext) -> Decision:
        """The plan's clock for the phase running now, or for the work about to arrive."""
        phase = self.sim.gpus[self.gpu_index].phase
        if phase is not None:
            return self._slack(ctx, self._clock(ctx, phase.kind, phase))
        view = self.sim.oracle_view(HORIZON_S)
        segments = view.segments.get(self.gpu_index, ())
        lead_s = ctx.dt_s + 2.0 * self.sim.scenario.pmu.clock_change_latency_s
        if segments and segments[0].start_s - ctx.now_s <= lead_s:
            # Work lands before the next tick could react: pre-warm to its kind's clock.
            return self._clock(ctx, segments[0].kind, None)
        return self._clock(ctx, "idle", None)

    def _slack(self, ctx: TickContext, decision: Decision) -> Decision:
        """The busy clock under the plan's slack ceiling while a downstream queue exists."""
        level = self.levels.get(SLACK, 1.0)
        if not isinstance(level, float) or level >= 1.0:
            return decision
        if not any(_queued(e) for e in self._feeds):
            return decision
        limits = ctx.limits
        ceiling = limits.snap_up(max(level * limits.default_max_mhz, limits.min_mhz))
        target = decision.target_sm_clock_mhz
        if target is not None and target <= ceiling:
            return decision
        return Decision(ceiling, Reason.PIPELINE, f"OPTIMUM: downstream queued, {ceiling} MHz")

    def _clock(self, ctx: TickContext, kind: str, phase: Phase | None) -> Decision:
        level = self.levels.get(kind, 1.0)
        limits = ctx.limits
        if level == NO_LOSS:
            if phase is None:  # pre-warming for work whose kernels are not known yet
                return Decision(None, Reason.DEFAULT, f"OPTIMUM: pre-warm for {kind}")
            clock = self._no_loss.get(phase)
            if clock is None:
                profile = self.sim.gpus[self.gpu_index].profile
                floor_mhz = NO_LOSS_FLOOR * limits.default_max_mhz
                clock = no_loss_clock_mhz(profile, phase, limits, floor_mhz)
                if len(self._no_loss) > 4096:
                    self._no_loss.clear()
                self._no_loss[phase] = clock
        else:
            assert isinstance(level, float)
            if level >= 1.0:
                return Decision(None, Reason.DEFAULT, f"OPTIMUM: {kind} at PMU default")
            clock = limits.snap_up(max(level * limits.default_max_mhz, limits.min_mhz))
        if clock >= limits.default_max_mhz:
            return Decision(None, Reason.COMPUTE, f"OPTIMUM: {kind} at boost")
        reason = Reason.STALL if kind == "idle" else Reason.RIDGE
        return Decision(clock, reason, f"OPTIMUM: {kind} at {clock} MHz")


def _queued(engine: object) -> bool:
    """True when a simulated engine has requests waiting (ORACLE ONLY: engine internals)."""
    if isinstance(engine, ArEngine):
        return bool(engine.waiting)
    return isinstance(engine, OneshotEngine) and bool(engine.queue)


def _factory(
    plan: Plan, sim: Simulation, gpu_index: int, settings: ControlSettings
) -> OptimumStrategy:
    levels = {str(k[1]): v for k, v in plan if isinstance(k, tuple) and k[0] == gpu_index}
    return OptimumStrategy(sim, gpu_index, levels)  # type: ignore[arg-type]


def optimum_spec(plan: Plan) -> StrategySpec:
    """The bench row that replays `plan` (labelled as the hindsight optimum)."""
    settings = ControlSettings(strategy=StrategyKind.DEFAULT)
    return StrategySpec(
        "optimum", settings, f"HINDSIGHT: {_describe(plan)}", partial(_factory, plan)
    )


def dimensions(scenario: Scenario) -> list[tuple[int, str]]:
    """(GPU, phase kind) pairs a scenario can run: the search's dimensions."""
    kinds: dict[int, set[str]] = {g: {"idle"} for g in range(len(scenario.gpus))}
    gpu_of = {st.name: st.gpu for st in scenario.pipeline.stages}
    for st in scenario.pipeline.stages:
        kinds[st.gpu] |= {"prefill", "decode"} if st.kind == "autoregressive" else {"oneshot"}
        upstream_gpu = gpu_of.get(st.upstream) if st.upstream else None
        if upstream_gpu is not None and upstream_gpu != st.gpu:
            kinds[upstream_gpu].add(SLACK)
    return [(g, k) for g in sorted(kinds) for k in (*KINDS, SLACK) if k in kinds[g]]


def search_optimum(
    scenario: Scenario,
    seed: int,
    pool: Executor,
    default: RunOutput,
    *,
    passes: int = PASSES,
    max_evals: int = MAX_EVALS,
    bounds: Bounds | None = None,
) -> SearchOutcome:
    """Find the hindsight optimum of `scenario` on `seed` (see the module doc)."""
    dims = dimensions(scenario)
    grids = {"idle": IDLE_LEVELS, SLACK: SLACK_LEVELS}
    levels: dict[Hashable, Sequence[Hashable]] = {d: grids.get(d[1], BUSY_LEVELS) for d in dims}
    default_plan: Plan = tuple((d, 1.0) for d in dims)
    lookahead_like: Plan = tuple(
        (d, 0.0 if d[1] == "idle" else 1.0 if d[1] == SLACK else NO_LOSS) for d in dims
    )
    # A static lock has no slack ceiling of its own: uniform starts leave it off.
    uniform = [tuple((d, 1.0 if d[1] == SLACK else f) for d in dims) for f in UNIFORM_STARTS]
    return coordinate_search(
        scenario,
        seed,
        pool,
        default,
        default_plan,
        levels,
        optimum_spec,
        starts=(lookahead_like, *uniform),
        passes=passes,
        max_evals=max_evals,
        bounds=bounds,
    )


def _describe(plan: Plan) -> str:
    parts = []
    for key, level in plan:
        assert isinstance(key, tuple)
        text = level if isinstance(level, str) else f"{level:.2f}"
        parts.append(f"g{key[0]}.{key[1]}={text}")
    return " ".join(parts)
