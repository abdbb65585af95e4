"""Component P: lower the clocks of a GPU whose stages feed a queued bottleneck.

In a multi-stage pipeline (thinker → talker → code2wav) the slowest stage sets the pace.
When its queue stays long, the stages upstream of it produce work that only waits there:
running them at boost buys no latency and costs energy. `PipelineGovernor` runs inside
`TriServeStrategy`, once per tick of one GPU, and reads what the node agent assembled for
that GPU's stages: each stage's own queue and the queues of the stages it feeds on the same
node, on any GPU (`StageObservation.downstream`: ``vllm:num_requests_waiting`` from the
scrapes, or the `waiting` of a fresh stage hint).

The rule, per GPU:

- *queued*: some downstream stage (one not on this GPU) has at least `queued_requests`
  waiting, and no stage on this GPU has a queue of its own (a GPU that hosts the bottleneck,
  or is itself falling behind, is never capped);
- after `sustain_s` of queued ticks, the ceiling steps down from boost by `step_fraction`
  every `step_s`, to `min_fraction` of boost, and never below the ridge floor the other
  components respect (`ridge_floor_fraction`) or the lowest allowed clock;
- it holds while the queue sits between the two lines (hysteresis), and the whole cap goes at
  once when the downstream queue drains below half of `queued_requests` (at least one), when
  a stage on this GPU starts to queue, when the downstream queue can no longer be read, or
  while the latency guard holds clocks back.

The strategy applies the ceiling only to what would otherwise run above it in a busy, not
compute-bound phase: a prefill sets the time to first token, which no downstream queue
hides, so compute phases keep A's boost; stalls keep D's lower clock.

The other side of the same rule protects the bottleneck itself: while a stage on this GPU
has requests queued (`protect`), A's ridge lock is lifted and the GPU runs at boost. The
ridge trades up to `maxThroughputLossPercent` of a stage's rate, which costs nothing while
the stage keeps up, but a queued stage is the pipeline's pace: every lost percent adds to
the wait of each request in its queue, and near saturation waits grow far faster than the
rate falls (an M/M/1 queue's wait scales with 1/(1 - load)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from triserve.control.decisions import DeviceLimits
from triserve.control.settings import ControlSettings
from triserve.telemetry import StageObservation


@dataclass(frozen=True, slots=True)
class QueueView:
    """What one tick shows of the queues around one GPU.

    `downstream_waiting` is the longest queue among stages fed by this GPU's stages and run
    elsewhere (None: no such stage, or none readable); `own_waiting` the longest queue of a
    stage on this GPU (0 when unknown) and `own_stage` its name; `bottleneck` names the
    downstream stage queued most.
    """

    downstream_waiting: int | None
    own_waiting: int
    bottleneck: str
    own_stage: str = ""


def queue_view(now_s: float, stages: Sequence[StageObservation]) -> QueueView:
    """The queues this GPU's stages see at `now_s` (see `QueueView`)."""
    here = {obs.stage for obs in stages}
    own = 0
    own_stage = ""
    longest: int | None = None
    bottleneck = ""
    for obs in stages:
        waiting = obs.waiting(now_s)
        if (waiting or 0) > own:
            own, own_stage = waiting or 0, obs.stage
        for peer in obs.downstream:
            if peer.stage in here:  # its queue is this GPU's own: counted above
                continue
            peer_waiting = peer.waiting(now_s)
            if peer_waiting is not None and (longest is None or peer_waiting > longest):
                longest, bottleneck = peer_waiting, peer.stage
    return QueueView(longest, own, bottleneck, own_stage)


class PipelineGovernor:
    """Per-GPU state of component P; `update` once per tick returns a ceiling or None."""

    def __init__(self, settings: ControlSettings) -> None:
        self.queued_requests = settings.pipeline_queued_requests
        self.drained_below = max(1, settings.pipeline_queued_requests // 2)
        self.sustain_s = settings.pipeline_sustain_s
        self.min_fraction = settings.pipeline_min_fraction
        self.step_fraction = settings.pipeline_step_fraction
        self.step_s = settings.pipeline_step_s
        self.floor_fraction = settings.ridge_floor_fraction
        #: The current ceiling as a fraction of boost (1.0: no cap).
        self.level = 1.0
        self.message = ""
        #: This tick's queues (None while the guard holds clocks back): `protect` reads it.
        self.view: QueueView | None = None
        self._queued_since_s: float | None = None
        self._last_step_s: float | None = None

    @property
    def capping(self) -> bool:
        """True while a ceiling below boost is in force."""
        return self.level < 1.0

    def release(self, why: str) -> None:
        """Lift the cap at once and forget the queue's history."""
        self.level = 1.0
        self._queued_since_s = None
        self._last_step_s = None
        self.message = why

    def update(
        self,
        now_s: float,
        stages: Sequence[StageObservation],
        limits: DeviceLimits,
        guard_active: bool = False,
    ) -> int | None:
        """The ceiling in MHz for the GPU running `stages` at `now_s`, or None (no cap)."""
        if guard_active:
            self.view = None
            self.release("latency guard active: no pipeline cap")
            return None
        view = self.view = queue_view(now_s, stages)
        down = view.downstream_waiting
        if down is None:
            self.release("no readable downstream queue: no pipeline cap")
            return None
        if view.own_waiting >= self.queued_requests:
            self.release(
                f"{view.own_waiting} requests queued on this GPU's own stages: no pipeline cap"
            )
            return None
        if down < self.drained_below:
            if self.capping or self._queued_since_s is not None:
                self.release(f"{view.bottleneck or 'downstream'} queue drained: cap lifted")
            return None
        if down >= self.queued_requests:
            if self._queued_since_s is None:
                self._queued_since_s = now_s
            if now_s - self._queued_since_s >= self.sustain_s:
                self._step_down(now_s)
        if not self.capping:
            return None
        ceiling = self.ceiling_mhz(limits)
        self.message = (
            f"{view.bottleneck} has {down} requests waiting downstream: capped at {ceiling} MHz "
            f"({self.level:.2f} x boost), upstream of a queued bottleneck"
        )
        return ceiling

    def ceiling_mhz(self, limits: DeviceLimits) -> int:
        """The current level as an allowed clock, never below the floor."""
        boost = limits.default_max_mhz
        floor = limits.snap_up(max(self.floor_fraction, self.min_fraction) * boost)
        return max(limits.snap_down(self.level * boost), floor, limits.min_mhz)

    def _step_down(self, now_s: float) -> None:
        last = self._last_step_s
        if last is not None and now_s - last < self.step_s:
            return
        lowest = max(self.min_fraction, self.floor_fraction)
        self.level = max(round(self.level - self.step_fraction, 6), lowest)
        self._last_step_s = now_s


def protect(view: QueueView) -> str | None:
    """Why this GPU must not run below boost now: a stage on it has requests queued.

    None when no stage on the GPU has a queue (see the module doc).
    """
    if view.own_waiting < 1:
        return None
    return (
        f"{view.own_stage}: {view.own_waiting} requests queued on this GPU (the pipeline's "
        "bottleneck now): ridge lifted, full boost"
    )
