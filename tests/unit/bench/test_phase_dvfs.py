"""The phase-aware DVFS baseline: decode clocks down, prefill at boost, back off on TBT."""

from __future__ import annotations

from tests.unit.decode_stage import DecodeStage
from triserve.bench.runner import StrategySpec, run_strategy
from triserve.control import (
    ControlSettings,
    Decision,
    DeviceLimits,
    PhaseDvfsStrategy,
    StageSignals,
    StrategyKind,
    TickContext,
)
from triserve.sim import Simulation

from .scenarios import short_reference

BUSY = StageSignals(True, False, False, False, 0.0, 4)


def test_decode_clock_walks_down_then_backs_off_when_tbt_inflates() -> None:
    sim = Simulation(short_reference())
    limits = DeviceLimits.from_backend(sim.backend, 1)
    sample = sim.backend.sample(1)  # idle: no tensor activity, so a busy tick is decode
    strategy = PhaseDvfsStrategy(max_increase_pct=1.0)
    stage = DecodeStage()

    def run(start_s: float, end_s: float, tbt_s: float) -> None:
        now = start_s
        while now < end_s:
            obs = [stage.observe(now, tbt_s)]
            decision = strategy.decide(TickContext(now, 0.25, sample, obs, BUSY, limits))
            assert decision.target_sm_clock_mhz == strategy.decode_mhz
            now += 0.25

    run(0.0, 40.0, 0.02)  # 20 s learning at default, then 20 s of unchanged latency
    lowered = strategy.decode_mhz
    assert lowered is not None and lowered < limits.default_max_mhz
    run(40.0, 50.0, 0.035)  # the lower clock now costs inter-token latency
    backed_off = strategy.decode_mhz
    assert backed_off is None or backed_off > lowered
    assert strategy.prefill_mhz is None  # no TTFT evidence: prefill is never lowered


class _Recorder:
    """Wraps one GPU's strategy; notes what the GPU really ran at each tick (test only)."""

    name = "recorder"

    def __init__(self, sim: Simulation, gpu: int, inner: PhaseDvfsStrategy) -> None:
        self.sim, self.gpu, self.inner = sim, gpu, inner
        self.ticks: list[tuple[float, str, int | None]] = []

    def decide(self, ctx: TickContext) -> Decision:
        decision = self.inner.decide(ctx)
        phase = self.sim.gpus[self.gpu].phase
        kind = "idle" if phase is None else phase.kind
        self.ticks.append((ctx.now_s, kind, decision.target_sm_clock_mhz))
        return decision


def test_on_the_reference_pipeline_decode_runs_low_and_prefill_at_boost() -> None:
    made: list[_Recorder] = []

    def factory(sim: Simulation, gpu: int, settings: ControlSettings) -> _Recorder:
        made.append(_Recorder(sim, gpu, PhaseDvfsStrategy(settings.max_latency_increase_pct)))
        return made[-1]

    spec = StrategySpec(
        "phase-dvfs", ControlSettings(strategy=StrategyKind.PHASE_DVFS), factory=factory
    )
    scenario = short_reference(duration_s=120.0)
    run_strategy(scenario, spec, seed=0)
    boost_mhz = Simulation(scenario).backend.default_max_sm_clock_mhz(0)
    assert len(made) == 2
    for rec in made:
        # Decode gives up clock as far as its inter-token latency allows (the decode curve
        # makes each step cost a little) ...
        decode_mhz = rec.inner.decode_mhz
        assert decode_mhz is not None and decode_mhz < boost_mhz
        # ... while compute-bound prefill is left at boost.
        assert rec.inner.prefill_mhz is None
    # What the GPUs really ran, after the learning phase: the phase read from the agent's
    # signals puts decode under the decode lock and most prefill ticks at boost.
    late = [(kind, lock) for rec in made for t, kind, lock in rec.ticks if t > 30.0]
    decode = [lock for kind, lock in late if kind == "decode"]
    prefill = [lock for kind, lock in late if kind == "prefill"]
    assert decode and sum(lock is not None for lock in decode) >= 0.8 * len(decode)
    assert prefill and sum(lock is None for lock in prefill) >= 0.6 * len(prefill)
