"""The event-driven simulation of one GPU node serving a multi-stage pipeline.

`Simulation(scenario, seed)` is the public entry point (docs/architecture.md, "Simulator"),
used by the benchmarks, the live demo, the controllers' tests and the calibration tests.
Between events every GPU holds a constant clock and phase; `_step` advances all of them to
the next event (arrival, hand-off, phase completion, PMU wake, clock change, tick, warm-up
boundary), applies what happened, and lets each GPU's PMU re-decide. Controllers see the
node only through `sim.backend` (a `GpuBackend`) and the serving snapshots/expositions,
and, where the node emits stage hints, through `stage_activity()`: what each serving
engine knows about itself (its scheduler's phase, its queue, what it sent downstream).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from triserve.gpu.backend import ClockEventReason
from triserve.sim.backend import SimBackend
from triserve.sim.engines import ArEngine, GpuRunner, OneshotEngine, PipelineRequest
from triserve.sim.metrics import DcgmRow, render_dcgm, render_vllm
from triserve.sim.oracle import OracleView, build_oracle_view
from triserve.sim.physics import GpuModel
from triserve.sim.profiles import get_profile
from triserve.sim.report import GpuAccount, GpuReport, SimReport, percentile
from triserve.sim.scenario import Scenario
from triserve.sim.workload import ArrivalSource
from triserve.telemetry import ServingSnapshot

__all__ = ["Simulation", "StageActivity", "StagePlacement"]

_EPS_S = 1e-9


@dataclass(frozen=True, slots=True)
class StagePlacement:
    """Where a stage runs and what feeds it, as the node agent would resolve it."""

    stage: str
    gpu_index: int
    upstream: tuple[str, ...]
    kind: str
    pod: str
    namespace: str
    container: str
    pipeline: str


@dataclass(frozen=True, slots=True)
class StageActivity:
    """What one stage's serving engine knows about itself right now (its hints' source).

    `phase` is what its scheduler runs (``prefill``, ``decode``, ``oneshot``; None when it
    has nothing it can run, including decode requests waiting on upstream input);
    `handoffs` counts the requests it has passed downstream so far.
    """

    stage: str
    phase: str | None
    waiting: int
    running: int
    handoffs: float


class Simulation:
    """A simulated GPU node running a scenario; deterministic for a given seed."""

    def __init__(self, scenario: Scenario, seed: int = 0) -> None:
        self.scenario = scenario
        self.seed = seed
        self.now_s = 0.0
        rng = random.Random(seed)
        tel = scenario.telemetry
        ideal = tel.counters == "ideal"
        self.gpus: list[GpuModel] = []
        for spec in scenario.gpus:
            profile = get_profile(spec.profile)
            gpu = GpuModel(
                profile,
                ambient_c=spec.ambient_c if spec.ambient_c is not None else scenario.ambient_c,
                thermal_r_scale=spec.thermal_r_scale,
                idle_hold_s=scenario.pmu.idle_hold_s,
                clock_change_latency_s=scenario.pmu.clock_change_latency_s,
                ideal_counters=ideal,
                perf_boost=scenario.pmu.perf_boost,
                parked_share=scenario.pmu.parked_share,
            )
            if not ideal:
                gpu.add_track("util", tel.util_period_s or profile.util_period_s)
                gpu.add_track("dcgm", tel.dcgm_interval_s)
            self.gpus.append(gpu)
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.engines: list[ArEngine | OneshotEngine] = []
        for i, st in enumerate(scenario.pipeline.stages):
            cls = ArEngine if st.kind == "autoregressive" else OneshotEngine
            eng = cls(i, st, self._schedule)
            eng.on_request_done = self._request_done
            if self.engines:
                self.engines[-1].downstream = eng
                eng.token_ratio = self.engines[-1].token_ratio * st.tokens_per_upstream_token
            self.engines.append(eng)
        self.runners = [
            GpuRunner([e for e in self.engines if e.spec.gpu == g]) for g in range(len(self.gpus))
        ]
        pl = scenario.pipeline
        self.placements: tuple[StagePlacement, ...] = tuple(
            StagePlacement(
                stage=s.name,
                gpu_index=s.gpu,
                upstream=(s.upstream,) if s.upstream else (),
                kind=s.kind,
                pod=s.pod or f"{pl.name}-{s.name}-0",
                namespace=pl.namespace,
                container=s.container or s.name,
                pipeline=pl.name,
            )
            for s in pl.stages
        )
        self._arrivals = ArrivalSource(scenario.workload, rng)
        self._rid = itertools.count()
        self.requests: list[PipelineRequest] = []
        self._accounts = [GpuAccount() for _ in self.gpus]
        self._max_temp_c = [g.temperature_c for g in self.gpus]
        self._wake_s = [math.inf] * len(self.gpus)
        self._done_s = [math.inf] * len(self.gpus)
        self._pmu_due_s = [0.0] * len(self.gpus)
        self._tokens_at_warmup: dict[str, float] | None = None
        self.backend = SimBackend(self)
        self._replan_all()
        pstated = scenario.pmu.pstated
        if pstated is not None:
            self._idle_polls = [0] * len(self.gpus)
            self._schedule(pstated.poll_s, partial(self._pstated_poll, pstated.poll_s))

    def _pstated_poll(self, poll_s: float) -> None:
        """One poll of the P-state daemon (`PstatedSpec`): NVML utilisation, then the state."""
        pstated = self.scenario.pmu.pstated
        assert pstated is not None
        for g, gpu in enumerate(self.gpus):
            # The daemon's own NVML read; ideal counters keep no sample period to read.
            if self.backend.ideal:
                busy = gpu.phase is not None
            else:
                busy = self.backend.utilization_gpu_pct(g) > 0
            if busy:
                self._idle_polls[g] = 0
                if gpu.forced_low_pstate:
                    gpu.force_low_pstate(False)
                    self._refresh(g)
            else:
                self._idle_polls[g] += 1
                if self._idle_polls[g] > pstated.idle_polls and not gpu.forced_low_pstate:
                    gpu.force_low_pstate(True)
                    self._refresh(g)
        self._schedule(self.now_s + poll_s, partial(self._pstated_poll, poll_s))

    # ----------------------------------------------------------------- plumbing
    def _schedule(self, at_s: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (at_s, next(self._seq), fn))

    def _request_done(self, req: PipelineRequest, now_s: float) -> None:
        req.done_s = now_s

    def _refresh(self, g: int) -> None:
        """Re-run GPU g's PMU and recompute when it next needs attention."""
        gpu = self.gpus[g]
        self._wake_s[g] = gpu.update_clock()
        self._pmu_due_s[g] = self.now_s + self.scenario.pmu.period_s
        rt = gpu.point.round_s
        self._done_s[g] = self.now_s + self.runners[g].time_to_event_s(rt) if rt > 0 else math.inf

    def on_actuation(self, g: int) -> None:
        """Called by the backend after a setter changed GPU g (lock, reset, power limit)."""
        self._refresh(g)

    def _replan_all(self) -> None:
        for g, gpu in enumerate(self.gpus):
            gpu.set_phase(self.runners[g].plan())
            self._refresh(g)

    def stalled(self, g: int) -> bool:
        """GPU g idle while one of its stages waits on upstream work still in the pipeline."""
        if not self.runners[g].idle:
            return False
        for e in self.runners[g].engines:
            if e.pending_upstream > 0:
                return True
            if isinstance(e, ArEngine) and e.running:
                return True  # chunked input: waiting for the upstream's next tokens
        return False

    def _advance(self, t_s: float) -> None:
        dt = t_s - self.now_s
        if dt <= 0:
            return
        measuring = self.now_s >= self.scenario.warmup_s - _EPS_S
        for g, gpu in enumerate(self.gpus):
            runner = self.runners[g]
            if measuring:
                r = gpu.reasons
                kind = "idle" if gpu.phase is None else gpu.phase.kind
                self._accounts[g].add(
                    dt, gpu.power_w, gpu.clock_mhz, kind, self.stalled(g), r.is_thermal, r.is_power
                )
            round_s = gpu.point.round_s
            gpu.advance(dt)
            if measuring and gpu.temperature_c > self._max_temp_c[g]:
                self._max_temp_c[g] = gpu.temperature_c
            runner.advance(dt, round_s, t_s)
        self.now_s = t_s

    def _arrive(self, now_s: float) -> None:
        for spec in self._arrivals.pop_due(now_s + _EPS_S):
            req = PipelineRequest(next(self._rid), spec)
            self.requests.append(req)
            for e in self.engines:
                e.pending_upstream += 1
            self.engines[0].accept(req, spec.arrival_s, None)

    def _next_event_s(self, limit_s: float) -> float:
        t = min(limit_s, self._arrivals.next_time_s())
        if self._heap:
            t = min(t, self._heap[0][0])
        if self.now_s < self.scenario.warmup_s:
            t = min(t, self.scenario.warmup_s)
        for g in range(len(self.gpus)):
            t = min(t, self._wake_s[g], self._done_s[g], self._pmu_due_s[g])
        return max(t, self.now_s)

    def _step(self, limit_s: float) -> None:
        t = self._next_event_s(limit_s)
        self._advance(t)
        while self._heap and self._heap[0][0] <= self.now_s + _EPS_S:
            heapq.heappop(self._heap)[2]()
        self._arrive(self.now_s)
        if self._tokens_at_warmup is None and self.now_s >= self.scenario.warmup_s - _EPS_S:
            self._tokens_at_warmup = self._tokens_by_stage()
        self._replan_all()

    # --------------------------------------------------------------- public API
    def run_until(
        self,
        t_s: float,
        on_tick: Callable[[float], None] | None = None,
        tick_s: float = 0.05,
        on_event: Callable[[float], None] | None = None,
    ) -> None:
        """Advance to `t_s`, calling `on_tick(now_s)` every `tick_s` of simulated time.

        `on_event(now_s)` runs after every event (arrival, phase change, hand-off …), before
        a tick due at the same time: what a serving engine that sends hints reacts to.
        """
        next_tick = self.now_s + tick_s if on_tick is not None else math.inf
        while self.now_s < t_s - _EPS_S:
            self._step(min(t_s, next_tick))
            if on_event is not None:
                on_event(self.now_s)
            if on_tick is not None and self.now_s >= next_tick - _EPS_S:
                on_tick(self.now_s)
                next_tick += tick_s

    def call_at(self, at_s: float, fn: Callable[[], None]) -> None:
        """Run `fn` at simulated time `at_s` (a delivery delay, e.g. a hint in flight)."""
        self._schedule(max(at_s, self.now_s), fn)

    def stage_activity(self) -> tuple[StageActivity, ...]:
        """Every stage's `StageActivity` now, in pipeline order."""
        out = []
        for engine in self.engines:
            m = engine.metrics
            if isinstance(engine, ArEngine):
                phase = "prefill" if engine.prefilling else "decode" if engine.active() else None
                chunked_ar = (
                    isinstance(engine.downstream, ArEngine)
                    and engine.downstream.spec.handoff == "chunked"
                )
                # A chunked downstream gets each request at its first token; a whole one
                # when the request finishes here.
                finished = m.requests_finished_total
                sent = m.ttft.total if chunked_ar and m.ttft is not None else finished
            else:
                phase = "oneshot" if engine.batch or engine.queue else None
                sent = m.requests_finished_total
            handoffs = sent if engine.downstream is not None else 0.0
            out.append(StageActivity(engine.spec.name, phase, m.waiting, m.running, handoffs))
        return tuple(out)

    def advance_to(self, t_s: float) -> None:
        """Advance to `t_s` without tick callbacks (the live demo follows the wall clock)."""
        self.run_until(t_s)

    def run(
        self, on_tick: Callable[[float], None] | None = None, tick_s: float = 0.05
    ) -> SimReport:
        """Run the scenario's whole duration and return the report."""
        self.run_until(self.scenario.duration_s, on_tick=on_tick, tick_s=tick_s)
        return self.report()

    def placement(self, stage: str) -> StagePlacement:
        """The placement of `stage` (KeyError naming the known stages)."""
        for p in self.placements:
            if p.stage == stage:
                return p
        raise KeyError(f"no stage {stage!r}; stages: {[p.stage for p in self.placements]}")

    def _engine(self, stage: str) -> ArEngine | OneshotEngine:
        return self.engines[[p.stage for p in self.placements].index(self.placement(stage).stage)]

    def serving_snapshot(self, stage: str) -> ServingSnapshot:
        """What a scrape of `stage`'s serving /metrics would return now."""
        return self._engine(stage).metrics.snapshot(self.now_s)

    def serving_exposition(self, stage: str) -> str:
        """`stage`'s metrics as vLLM-format Prometheus text."""
        return render_vllm(self.serving_snapshot(stage), self.scenario.pipeline.model_name)

    def dcgm_exposition(self, hostname: str | None = None) -> str:
        """dcgm-exporter-format text for every GPU, labelled with its stage pods.

        The values are dcgm-exporter's last collection (``telemetry.dcgm_interval_s``) and
        the fields its default counter file unless ``telemetry.dcgm_fields: profiling``
        (SM_ACTIVE, SM_OCCUPANCY and PIPE_FP32_ACTIVE only then).
        """
        host = hostname or self.scenario.hostname
        rows = []
        for g in range(len(self.gpus)):
            ident = self.backend.identity(g)
            pods = [p for p in self.placements if p.gpu_index == g]
            first = pods[0] if pods else None
            labels = (
                ("gpu", str(g)),
                ("UUID", ident.uuid),
                ("pci_bus_id", ident.pci_bus_id),
                ("device", f"nvidia{g}"),
                ("modelName", ident.name),
                ("Hostname", host),
                ("container", first.container if first else ""),
                ("namespace", first.namespace if first else ""),
                ("pod", first.pod if first else ""),
            )
            rows.append(DcgmRow(labels, self.backend.dcgm_values(g)))
        tel = self.scenario.telemetry
        profiling = tel.dcgm_fields == "profiling" or tel.counters == "ideal"
        return render_dcgm(rows, profiling=profiling)

    def oracle_view(self, horizon_s: float = 10.0) -> OracleView:
        """ORACLE ONLY — future knowledge no production controller has. See sim.oracle."""
        return build_oracle_view(self, horizon_s)

    def _tokens_by_stage(self) -> dict[str, float]:
        return {
            e.spec.name: e.metrics.generation_tokens_total
            for e in self.engines
            if isinstance(e, ArEngine)
        }

    def report(self) -> SimReport:
        """Measurements after the warm-up, up to `now_s`."""
        warm = self.scenario.warmup_s
        window = max(self.now_s - warm, 0.0)
        gpus = tuple(
            GpuReport.from_account(
                g,
                self.gpus[g].profile.name,
                tuple(e.spec.name for e in self.runners[g].engines),
                self._accounts[g],
                self._max_temp_c[g],
            )
            for g in range(len(self.gpus))
        )
        measured = [r for r in self.requests if r.spec.arrival_s >= warm]
        done = [r for r in measured if r.done_s is not None]
        unfinished = len(measured) - len(done)
        ttft = tuple(r.first_token_s - r.spec.arrival_s for r in measured if r.first_token_s)
        audio = tuple(r.first_audio_s - r.spec.arrival_s for r in measured if r.first_audio_s)
        e2e = tuple(r.done_s - r.spec.arrival_s for r in done if r.done_s is not None)
        base = self._tokens_at_warmup or dict.fromkeys(self._tokens_by_stage(), 0.0)
        by_stage = {k: v - base.get(k, 0.0) for k, v in self._tokens_by_stage().items()}
        energy = sum(g.energy_j for g in gpus)
        tokens = sum(by_stage.values())
        return SimReport(
            scenario=self.scenario.name,
            seed=self.seed,
            warmup_s=warm,
            window_s=window,
            gpus=gpus,
            energy_j=energy,
            arrived_requests=len(measured),
            completed_requests=len(done),
            unfinished_requests=unfinished,
            ttft_s=ttft,
            first_audio_s=audio,
            e2e_s=e2e,
            generated_tokens=tokens,
            generated_tokens_by_stage=by_stage,
            throughput_rps=len(done) / window if window > 0 else 0.0,
            tokens_per_joule=tokens / energy if energy > 0 else 0.0,
            ttft_p50_s=percentile(ttft, 0.5),
            ttft_p99_s=percentile(ttft, 0.99),
            e2e_p50_s=percentile(e2e, 0.5),
            e2e_p99_s=percentile(e2e, 0.99),
        )

    def reasons(self, g: int) -> ClockEventReason:
        """Clock-event reasons of GPU g right now (what NVML would report)."""
        return self.gpus[g].reasons
