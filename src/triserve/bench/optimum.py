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
online; 1.0 means no ceiling. It may also do what the rows users run instead do: idle in
the lowest performance state (idle level ``low-pstate``, as CUDA_DISABLE_PERF_BOOST=1 or
nvidia-pstated reach it, but lifted exactly in time for the next work), and a static power
limit per GPU (``cap``, a fraction of the default limit, as the ``power-cap-best`` row).

`search_optimum` finds the plan offline, by coordinate descent (`triserve.bench.search`):
the least energy per generated token under the same rule as the rows it judges (by default
p99 end-to-end latency and p99 TTFT within +1% of the ``default`` row and throughput within
-0.5%; an SLO row's optimum, ``optimum-slo-*``, within that row's targets). The bench runs
the search on a seed it does not score (`triserve.bench.cli`), with a margin on each latency
bound there (`triserve.bench.catalog.selection_bounds`) so that the plan keeps the rule on
other seeds, replays the plan on every scored seed, and there reports the best of the
replay and every other row that keeps the same rule on that seed, so that the optimum is
never below a row it judges. Unlike the
`lookahead` row it is not bound to Tri-serve's per-phase no-loss rule: it may trade latency
for energy in any phase kind wherever the tails allow. It acts on the bench's control tick
like every row, so a phase that starts between ticks runs one tick at the previous lock: the
optimum over tick-granular per-phase-kind clocks, not over all conceivable controllers. The
search starts from default, from the lookahead-like plan (every busy kind ``no-loss``, idle
at the lowest clock, and the same idling in the lowest performance state), from uniform
plans (one fraction of boost for every kind of every GPU, as a static lock; one power limit
for every GPU, as a static cap) and from default with idle GPUs in the lowest performance
state, so it is never worse than any of them, nor than the rows they stand for, when they
meet the rule.
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
#: The idle level that puts an idle GPU in its lowest performance state (lifted in time).
LOW_PSTATE = "low-pstate"
#: Clock levels while idle (0.0 = the lowest supported clock; 1.0 = the PMU's own idle).
IDLE_LEVELS: tuple[float | str, ...] = (
    0.0,
    0.2,
    0.35,
    0.5,
    0.65,
    0.7,
    0.8,
    0.9,
    1.0,
    LOW_PSTATE,
)
#: Uniform plans tried as start points: every kind of every GPU at one fraction of boost, as
#: a static clock lock does (the ``static-best`` row's uniform settings), so the optimum is
#: never worse than the best of them where it meets the rule.
UNIFORM_STARTS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
#: Static power limits per GPU, as fractions of its default limit (1.0 = no cap).
CAP = "cap"
CAP_LEVELS: tuple[float | str, ...] = (0.4, 0.5, 0.6, 0.7, 0.85, 1.0)
#: Ceilings on a GPU's busy clocks while a downstream stage on another GPU has a queue.
SLACK = "slack"
SLACK_LEVELS: tuple[float | str, ...] = (0.45, 0.55, 0.65, 0.8, 0.9, 1.0)
#: Passes of coordinate descent, and the most simulations one search may run.
PASSES = 3
MAX_EVALS = 80


class OptimumStrategy:
    """ORACLE ONLY — one GPU's clocks by phase kind, from a plan found in hindsight."""

    name = "optimum"
    warning = ORACLE_WARNING

    def __init__(self, sim: Simulation, gpu_index: int, levels: Mapping[str, float | str]) -> None:
        self.sim = sim
        self.gpu_index = gpu_index
        self.levels = dict(levels)
        self._capped = False
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
        gpu = self.sim.gpus[self.gpu_index]
        cap = self.levels.get(CAP, 1.0)
        if isinstance(cap, float) and cap < 1.0 and not self._capped:
            # A static limit, set once (ORACLE ONLY: straight on the simulated GPU).
            gpu.set_power_limit(cap * gpu.profile.power_limit_default_w)
            self._capped = True
        phase = gpu.phase
        if phase is not None:
            self._low_pstate(False)
            return self._slack(ctx, self._clock(ctx, phase.kind, phase))
        view = self.sim.oracle_view(HORIZON_S)
        segments = view.segments.get(self.gpu_index, ())
        lead_s = ctx.dt_s + 2.0 * self.sim.scenario.pmu.clock_change_latency_s
        if segments and segments[0].start_s - ctx.now_s <= lead_s:
            # Work lands before the next tick could react: pre-warm to its kind's clock.
            self._low_pstate(False)
            return self._clock(ctx, segments[0].kind, None)
        if self.levels.get("idle") == LOW_PSTATE:
            self._low_pstate(True)
            return Decision(None, Reason.STALL, "OPTIMUM: idle in the lowest performance state")
        return self._clock(ctx, "idle", None)

    def _low_pstate(self, forced: bool) -> None:
        """Force or lift the lowest performance state (ORACLE ONLY: the simulated GPU)."""
        gpu = self.sim.gpus[self.gpu_index]
        if gpu.forced_low_pstate != forced:
            gpu.force_low_pstate(forced)
            self.sim.on_actuation(self.gpu_index)

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
    dims = [(g, k) for g in sorted(kinds) for k in (*KINDS, SLACK) if k in kinds[g]]
    return [*dims, *((g, CAP) for g in sorted(kinds))]


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
    grids = {"idle": IDLE_LEVELS, SLACK: SLACK_LEVELS, CAP: CAP_LEVELS}
    levels: dict[Hashable, Sequence[Hashable]] = {d: grids.get(d[1], BUSY_LEVELS) for d in dims}
    default_plan: Plan = tuple((d, 1.0) for d in dims)

    def lookahead_like(idle: float | str) -> Plan:
        return tuple(
            (d, idle if d[1] == "idle" else 1.0 if d[1] in (SLACK, CAP) else NO_LOSS) for d in dims
        )

    # A static lock has no slack ceiling or cap of its own: uniform starts leave them off.
    uniform = [tuple((d, 1.0 if d[1] in (SLACK, CAP) else f) for d in dims) for f in UNIFORM_STARTS]
    capped = [
        tuple((d, f if d[1] == CAP else 1.0) for d in dims)
        for f in CAP_LEVELS
        if isinstance(f, float) and f < 1.0
    ]
    low_idle: Plan = tuple((d, LOW_PSTATE if d[1] == "idle" else 1.0) for d in dims)
    return coordinate_search(
        scenario,
        seed,
        pool,
        default,
        default_plan,
        levels,
        optimum_spec,
        starts=(lookahead_like(0.0), lookahead_like(LOW_PSTATE), low_idle, *uniform, *capped),
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
