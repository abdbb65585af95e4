"""ORACLE ONLY: the simulator's knowledge of each GPU's upcoming phases.

!!! No production controller can know this. !!!
`Simulation.oracle_view()` calls `build_oracle_view`; only an explicitly labelled oracle
controller in `triserve.bench` may use it, to bound what any honest controller could reach.
The view lists, per GPU, the phase running now, the prefills queued on it, hand-offs already
in flight toward it, and requests that will arrive at the pipeline within the horizon — each
with phase kind, arithmetic intensity and an estimated start time (at the current clock for
work on the GPU, at the arrival or delivery time for work not yet there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from triserve.sim.engines import ArEngine, OneshotEngine

if TYPE_CHECKING:
    from triserve.sim.simulation import Simulation

__all__ = ["ORACLE_WARNING", "OracleSegment", "OracleView", "build_oracle_view"]

ORACLE_WARNING = "ORACLE ONLY: future knowledge from simulator internals; never in production"


@dataclass(frozen=True, slots=True)
class OracleSegment:
    """One upcoming (or current) phase on a GPU."""

    gpu_index: int
    stage: str
    kind: str  # prefill | decode | oneshot
    ai: float
    start_s: float
    end_estimate_s: float | None


@dataclass(frozen=True, slots=True)
class OracleView:
    """ORACLE ONLY — per-GPU upcoming segments, sorted by start; `warning` says so."""

    now_s: float
    horizon_s: float
    segments: dict[int, tuple[OracleSegment, ...]]
    warning: str = ORACLE_WARNING

    def next_busy_s(self, gpu_index: int) -> float | None:
        """When GPU `gpu_index` next has work (now if busy), None if not within the horizon."""
        segs = self.segments.get(gpu_index, ())
        return min((s.start_s for s in segs), default=None)


def build_oracle_view(sim: Simulation, horizon_s: float) -> OracleView:
    """Assemble the ORACLE ONLY view of the next `horizon_s` seconds."""
    now = sim.now_s
    out: dict[int, list[OracleSegment]] = {g: [] for g in range(len(sim.gpus))}
    for g, runner in enumerate(sim.runners):
        gpu = sim.gpus[g]
        phase = gpu.phase
        if phase is not None:
            end = runner.time_to_event_s(gpu.point.round_s)
            stage = ",".join(runner.busy_stage_names())
            out[g].append(OracleSegment(g, stage, phase.kind, phase.ai, now, now + end))
        t = now
        for e in runner.engines:
            if isinstance(e, ArEngine):
                for job in list(e.prefilling)[1:] + list(e.waiting):
                    k = e.prefill_kernel(job)
                    out[g].append(OracleSegment(g, e.spec.name, "prefill", k.ai, t, None))
                if e.running or e.prefilling or e.waiting:
                    k = e.decode_kernel(max(len(e.running), 1))
                    out[g].append(OracleSegment(g, e.spec.name, "decode", k.ai, t, None))
            elif isinstance(e, OneshotEngine) and e.queue:
                ai = e.kernel().ai if e.batch else e.work.ai
                out[g].append(OracleSegment(g, e.spec.name, "oneshot", ai, t, None))
    # Hand-offs in flight: the heap holds their delivery times.
    for at_s, _, fn in sim._heap:
        if at_s > now + horizon_s:
            continue
        target = getattr(fn, "__self__", None)
        for e in sim.engines:
            if target is e or _closure_targets(fn, e):
                kind = "oneshot" if isinstance(e, OneshotEngine) else "prefill"
                ai = e.work.ai if isinstance(e, OneshotEngine) else e.prefill.ai
                out[e.spec.gpu].append(OracleSegment(e.spec.gpu, e.spec.name, kind, ai, at_s, None))
                break
    first = sim.engines[0]
    if isinstance(first, ArEngine):
        for spec in sim._arrivals.peek_until(now + horizon_s):
            ai = first.prefill.ai
            out[first.spec.gpu].append(
                OracleSegment(first.spec.gpu, first.spec.name, "prefill", ai, spec.arrival_s, None)
            )
    return OracleView(
        now_s=now,
        horizon_s=horizon_s,
        segments={g: tuple(sorted(v, key=lambda s: s.start_s)) for g, v in out.items()},
    )


def _closure_targets(fn: object, engine: object) -> bool:
    cells = getattr(fn, "__closure__", None) or ()
    defaults = getattr(fn, "__defaults__", None) or ()
    values = [c.cell_contents for c in cells] + list(defaults)
    return any(v is engine for v in values)
