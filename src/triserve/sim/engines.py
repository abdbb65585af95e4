"""Stage engines and per-GPU scheduling: continuous batching, prefill, decode, one-shot passes.

Called by `triserve.sim.simulation.Simulation`. An `ArEngine` is one autoregressive stage
(thinker, talker): a waiting queue, prefills one request at a time, and a decode batch that
progresses as a fluid (every running sequence gains ``dt / step_time`` tokens between
events). A `OneshotEngine` (code2wav) runs one pass per batch of queued chunks. A `GpuRunner`
picks what its GPU runs next — one-shot passes first, then a pending prefill, else one mixed
decode phase over all its engines' batches (round-robin, like two processes sharing a GPU) —
and turns it into a `triserve.sim.physics.Phase`; what it runs is one `Work` value (`Idle`,
`OneshotPass`, `Prefill` or `Decode`), each carrying exactly the engine and jobs it needs.
Hand-offs between stages are scheduled through the simulation's `schedule` callback after
the edge's latency.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from triserve.sim.metrics import StageMetrics
from triserve.sim.physics import Kernel, Phase
from triserve.sim.scenario import StageSpec
from triserve.sim.workload import RequestSpec

__all__ = [
    "ArEngine",
    "Decode",
    "GpuRunner",
    "Idle",
    "Job",
    "OneshotEngine",
    "OneshotPass",
    "PipelineRequest",
    "Prefill",
    "Scheduler",
    "Work",
]

_EPS = 1e-9
Scheduler = Callable[[float, Callable[[], None]], None]


@dataclass(slots=True, eq=False)
class PipelineRequest:
    """One request's journey through the whole pipeline."""

    rid: int
    spec: RequestSpec
    first_token_s: float | None = None
    first_audio_s: float | None = None
    done_s: float | None = None
    stages_reached: int = 0
    outstanding_items: int = 0
    final_enqueued: bool = False


@dataclass(slots=True, eq=False)
class Job:
    """A request at one autoregressive stage."""

    req: PipelineRequest
    arrived_s: float
    target: float
    prompt_tokens: int
    upstream: Job | None
    ratio: float
    prefill_left: float = 1.0
    generated: float = 0.0
    emitted: float = 0.0
    first_token_s: float | None = None
    done: bool = False

    def cap(self) -> float:
        """Tokens this job may have generated so far (chunked input limits it)."""
        up = self.upstream
        if up is None or up.done:
            return self.target
        return min(self.target, up.generated * self.ratio)


@dataclass(slots=True, eq=False)
class OneshotItem:
    """A chunk of upstream output waiting for a one-shot pass."""

    req: PipelineRequest
    tokens: float
    final: bool
    enqueued_s: float


class _Engine:
    """Common parts: spec, position in the chain, metrics and the downstream link."""

    def __init__(self, index: int, spec: StageSpec, schedule: Scheduler) -> None:
        self.index = index
        self.spec = spec
        self.schedule = schedule
        self.metrics = StageMetrics()
        self.downstream: _Engine | None = None
        self.on_request_done: Callable[[PipelineRequest, float], None] = lambda r, t: None
        self.pending_upstream = 0  # requests in the pipeline that have not reached this stage
        # Tokens this stage handles per thinker output token (product of the chain's ratios).
        self.token_ratio = 1.0

    def accept(self, req: PipelineRequest, now_s: float, upstream: Job | None) -> None:
        raise NotImplementedError

    def accept_item(self, item: OneshotItem) -> None:
        raise NotImplementedError


class ArEngine(_Engine):
    """An autoregressive stage with continuous batching."""

    def __init__(self, index: int, spec: StageSpec, schedule: Scheduler) -> None:
        super().__init__(index, spec, schedule)
        self.waiting: deque[Job] = deque()
        self.prefilling: deque[Job] = deque()
        self.running: list[Job] = []
        assert spec.prefill is not None and spec.decode is not None
        self.prefill = spec.prefill
        self.decode = spec.decode

    def accept(self, req: PipelineRequest, now_s: float, upstream: Job | None) -> None:
        """A request arrives at this stage (from the front door or from upstream)."""
        self.pending_upstream -= 1
        ratio = self.spec.tokens_per_upstream_token
        target = max(1.0, float(round(req.spec.output_tokens * self.token_ratio)))
        chunked = upstream is not None and self.spec.handoff == "chunked"
        prompt = req.spec.input_tokens if self.spec.prefill_tokens == "input" else 0
        job = Job(req, now_s, target, prompt, upstream if chunked else None, ratio)
        if prompt == 0:
            job.prefill_left = 0.0
        self.waiting.append(job)
        self._admit(now_s)

    def _admit(self, now_s: float) -> None:
        while self.waiting and len(self.running) + len(self.prefilling) < self.spec.max_batch:
            job = self.waiting.popleft()
            if job.prefill_left > 0:
                self.prefilling.append(job)
            else:
                self._first_token(job, now_s)
        self.metrics.running = len(self.running) + len(self.prefilling)
        self.metrics.waiting = len(self.waiting)

    def prefill_kernel(self, job: Job) -> Kernel:
        """The kernel of `job`'s whole prefill."""
        p = self.prefill
        flops = p.flops_per_token * job.prompt_tokens
        return Kernel(
            flops,
            flops / p.ai,
            p.efficiency,
            p.tensor_share,
            p.sm_fill,
            p.occupancy,
            p.clock_sensitive_share,
        )

    def decode_kernel(self, batch: int) -> Kernel:
        """The kernel of one decode step of `batch` sequences."""
        d = self.decode
        # Weight-streaming GEMVs spread over every SM at any batch, but the attention
        # kernels of one to three sequences launch fewer blocks than there are SMs.
        fill = d.sm_fill * (0.8 + 0.05 * min(batch, 4))
        nbytes = d.weight_bytes + d.bytes_per_seq * batch
        return Kernel(
            d.flops_per_token * batch,
            nbytes,
            d.efficiency,
            d.tensor_share,
            fill,
            d.occupancy,
            d.clock_share(batch),
        )

    def active(self) -> list[Job]:
        """Running jobs that can make progress now (not waiting on upstream chunks)."""
        return [j for j in self.running if j.generated < j.cap() - _EPS]

    def _chunk_limit(self, job: Job) -> float:
        ds = self.downstream
        if ds is None or ds.spec.handoff != "chunked" or not isinstance(ds, OneshotEngine):
            return math.inf
        size = ds.spec.chunk_tokens
        nxt = job.emitted + size
        return nxt if nxt < job.target - _EPS else math.inf

    def steps_to_event(self, active: list[Job]) -> float:
        """Decode steps until some running job finishes, blocks or emits a chunk."""
        best = math.inf
        for j in active:
            best = min(best, j.cap() - j.generated, self._chunk_limit(j) - j.generated)
        return max(best, 0.0)

    def _first_token(self, job: Job, now_s: float) -> None:
        job.first_token_s = now_s
        job.generated = max(job.generated, min(1.0, job.target))
        self.metrics.ttft.observe(now_s - job.arrived_s)
        self.metrics.generation_tokens_total += 1.0
        self.metrics.prompt_tokens_total += job.prompt_tokens
        if self.index == 0 and job.req.first_token_s is None:
            job.req.first_token_s = now_s
        self.running.append(job)
        ds = self.downstream
        if ds is not None and ds.spec.handoff == "chunked" and isinstance(ds, ArEngine):
            at_s = now_s + ds.spec.chunk_latency_s
            self.schedule(at_s, lambda: ds.accept(job.req, at_s, job))

    def finish_prefill(self, job: Job, now_s: float) -> None:
        """The prefill of `job` completed: first token out, job joins the decode batch."""
        self.prefilling.remove(job)
        job.prefill_left = 0.0
        self._first_token(job, now_s)
        self._after_progress(now_s)

    def progress(self, active: list[Job], steps: float, step_s: float, now_s: float) -> None:
        """Every active job generated `steps` tokens (fluid), each taking `step_s`."""
        if steps <= 0:
            return
        gained = 0.0
        for j in active:
            new = min(j.generated + steps, j.cap())
            gained += new - j.generated
            j.generated = new
        self.metrics.generation_tokens_total += gained
        self.metrics.itl.observe(step_s, gained)
        self._after_progress(now_s)

    def _after_progress(self, now_s: float) -> None:
        ds = self.downstream
        finished = []
        for j in self.running:
            lim = self._chunk_limit(j)
            while j.generated >= lim - 1e-6 and isinstance(ds, OneshotEngine):
                self._emit(j, j.emitted + ds.spec.chunk_tokens, False, now_s)
                lim = self._chunk_limit(j)
            if j.generated >= j.target - 1e-6:
                finished.append(j)
        for j in finished:
            self.running.remove(j)
            j.done = True
            self.metrics.requests_finished_total += 1
            self.metrics.e2e.observe(now_s - j.arrived_s)
            if ds is None:
                self.on_request_done(j.req, now_s)
            elif isinstance(ds, OneshotEngine):
                self._emit(j, j.target, True, now_s)
            elif ds.spec.handoff == "whole":
                self.schedule(now_s + ds.spec.handoff_latency_s, _handoff(ds, j.req, now_s))
        if finished:
            self._admit(now_s)
        self.metrics.running = len(self.running) + len(self.prefilling)

    def _emit(self, job: Job, upto: float, final: bool, now_s: float) -> None:
        ds = self.downstream
        assert isinstance(ds, OneshotEngine)
        tokens = upto - job.emitted
        job.emitted = upto
        latency = (
            ds.spec.chunk_latency_s if ds.spec.handoff == "chunked" else ds.spec.handoff_latency_s
        )
        item = OneshotItem(job.req, tokens, final, now_s + latency)
        job.req.outstanding_items += 1
        if final:
            job.req.final_enqueued = True
        self.schedule(now_s + latency, lambda: ds.accept_item(item))


def _handoff(ds: _Engine, req: PipelineRequest, now_s: float) -> Callable[[], None]:
    """The whole-output hand-off of `req` to `ds`, arriving after the edge's latency."""
    at_s = now_s + ds.spec.handoff_latency_s
    return lambda: ds.accept(req, at_s, None)


class OneshotEngine(_Engine):
    """A one-pass stage (code2wav): batches queued chunks into one pass."""

    def __init__(self, index: int, spec: StageSpec, schedule: Scheduler) -> None:
        super().__init__(index, spec, schedule)
        self.queue: deque[OneshotItem] = deque()
        self.batch: list[OneshotItem] = []
        self.progress_frac = 0.0
        self.started: dict[int, float] = {}
        assert spec.oneshot is not None
        self.work = spec.oneshot

    def accept_item(self, item: OneshotItem) -> None:
        """A chunk (or the whole upstream output) arrives for a pass."""
        if item.req.rid not in self.started:
            self.started[item.req.rid] = item.enqueued_s
            self.pending_upstream -= 1
        self.queue.append(item)
        self.metrics.waiting = len(self.queue)

    def start_batch(self) -> None:
        """Take queued chunks into the next one-shot pass."""
        while self.queue and len(self.batch) < self.spec.max_batch:
            self.batch.append(self.queue.popleft())
        self.progress_frac = 0.0
        self.metrics.running = len(self.batch)
        self.metrics.waiting = len(self.queue)

    def kernel(self) -> Kernel:
        """The kernel of the current one-shot pass."""
        w = self.work
        tokens = sum(i.tokens for i in self.batch)
        flops = w.fixed_flops + w.flops_per_token * max(tokens, 1.0)
        return Kernel(
            flops,
            flops / w.ai,
            w.efficiency,
            w.tensor_share,
            w.sm_fill,
            w.occupancy,
            w.clock_sensitive_share,
        )

    def finish_batch(self, now_s: float) -> None:
        """Hand the finished pass's chunks on and complete their requests."""
        for item in self.batch:
            req = item.req
            self.metrics.prompt_tokens_total += item.tokens
            req.outstanding_items -= 1
            if req.first_audio_s is None:
                req.first_audio_s = now_s
                self.metrics.ttft.observe(now_s - self.started[req.rid])
            if item.final and req.outstanding_items == 0:
                self.metrics.requests_finished_total += 1
                self.metrics.e2e.observe(now_s - self.started.pop(req.rid))
                self.on_request_done(req, now_s)
        self.batch = []
        self.metrics.running = 0


@dataclass(frozen=True, slots=True)
class Idle:
    """The GPU has nothing it can run now."""


@dataclass(frozen=True, slots=True)
class OneshotPass:
    """The GPU runs `engine`'s current one-shot pass."""

    engine: OneshotEngine


@dataclass(frozen=True, slots=True)
class Prefill:
    """The GPU runs the whole prefill of `job`, the first pending one of `engine`."""

    engine: ArEngine
    job: Job


@dataclass(frozen=True, slots=True)
class Decode:
    """The GPU runs one mixed decode phase: every engine's active jobs, round-robin."""

    sets: tuple[tuple[ArEngine, list[Job]], ...]


#: What a GPU runs between two events (one of these at a time).
Work = Idle | OneshotPass | Prefill | Decode
IDLE = Idle()


@dataclass(slots=True, eq=False)
class GpuRunner:
    """Chooses and advances the work of one GPU across the engines placed on it."""

    engines: list[_Engine]
    work: Work = IDLE
    _phases: dict[object, Phase] = field(default_factory=dict)

    @property
    def idle(self) -> bool:
        """True when the GPU has nothing it can run now."""
        return isinstance(self.work, Idle)

    def _phase(self, key: object, kind: str, kernels: Callable[[], tuple[Kernel, ...]]) -> Phase:
        ph = self._phases.get(key)
        if ph is None:
            if len(self._phases) > 512:
                self._phases.clear()
            ph = self._phases[key] = Phase(kind, kernels())
        return ph

    def plan(self) -> Phase | None:
        """Pick the phase to run now; keeps an unfinished one-shot pass going."""
        for e in self.engines:
            if isinstance(e, OneshotEngine) and (e.batch or e.queue):
                if not e.batch:
                    e.start_batch()
                self.work = OneshotPass(e)
                tokens = round(sum(i.tokens for i in e.batch), 3)
                one: OneshotEngine = e
                # _phase calls the factory at once, so binding the loop variable is safe.
                return self._phase(("o", e.index, tokens), "oneshot", lambda: (one.kernel(),))  # noqa: B023
        for e in self.engines:
            if isinstance(e, ArEngine) and e.prefilling:
                ar: ArEngine = e
                first: Job = ar.prefilling[0]
                self.work = Prefill(ar, first)
                return self._phase(
                    ("p", ar.index, first.prompt_tokens),
                    "prefill",
                    lambda: (ar.prefill_kernel(first),),  # noqa: B023
                )
        sets: list[tuple[ArEngine, list[Job]]] = []
        key: list[tuple[int, int]] = []
        for e in self.engines:
            if isinstance(e, ArEngine):
                act = e.active()
                if act:
                    sets.append((e, act))
                    key.append((e.index, len(act)))
        if sets:
            self.work = Decode(tuple(sets))
            return self._phase(
                ("d", tuple(key)), "decode", lambda: tuple(e.decode_kernel(len(a)) for e, a in sets)
            )
        self.work = IDLE
        return None

    def time_to_event_s(self, round_s: float) -> float:
        """Time until the current phase completes something, at the current round time."""
        work = self.work
        if isinstance(work, OneshotPass):
            return (1.0 - work.engine.progress_frac) * round_s
        if isinstance(work, Prefill):
            return work.job.prefill_left * round_s
        if isinstance(work, Decode):
            return min(e.steps_to_event(a) for e, a in work.sets) * round_s
        return math.inf

    def advance(self, dt_s: float, round_s: float, now_s: float) -> None:
        """Progress the current phase by `dt_s` (the clock was constant over it)."""
        work = self.work
        if isinstance(work, Idle) or round_s <= 0 or dt_s <= 0:
            return
        frac = dt_s / round_s
        if isinstance(work, OneshotPass):
            work.engine.progress_frac += frac
            if work.engine.progress_frac >= 1.0 - 1e-7:
                work.engine.finish_batch(now_s)
        elif isinstance(work, Prefill):
            work.job.prefill_left -= frac
            if work.job.prefill_left <= 1e-7:
                work.engine.finish_prefill(work.job, now_s)
        else:
            for e, act in work.sets:
                e.progress(act, frac, round_s, now_s)

    def busy_stage_names(self) -> list[str]:
        """Stages on this GPU that have running or queued work."""
        names = []
        for e in self.engines:
            if (isinstance(e, ArEngine) and (e.running or e.prefilling or e.waiting)) or (
                isinstance(e, OneshotEngine) and (e.batch or e.queue)
            ):
                names.append(e.spec.name)
        return names
