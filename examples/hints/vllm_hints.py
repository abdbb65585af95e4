"""Stage hints from a vLLM-style engine loop: a sketch to adapt, not a vLLM plugin.

A vLLM-style engine repeats one step: the scheduler picks what runs (new prompts to prefill,
or the running batch to decode), the model runs it, finished requests leave. `HintedStep`
wraps that step and sends a hint only when the answer changes, so a steady decode costs one
heartbeat a second. The serving pod mounts the agent's hint directory (docs/serving-pods.md).

    from vllm_hints import HintedStep
    hinted = HintedStep(engine.step, scheduler)   # once, at start-up
    while True:
        outputs = hinted()                          # instead of engine.step()

`scheduler` is anything with `waiting` and `running` sequences and, after the step's
scheduling, `last_step_prefill` (True when the step ran prompt tokens); vLLM's scheduler
exposes the first two, the third is one line in the model runner. Requests that finish here
and move to the next stage (a thinker handing hidden states to a talker) call
`hinted.handoff()`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from triserve.hints import HintClient  # or a vendored copy of src/triserve/hints.py


class SchedulerView(Protocol):
    """What the wrapper reads from the engine's scheduler."""

    waiting: Any
    running: Any
    last_step_prefill: bool


class HintedStep:
    """Calls the engine's step and tells the node agent what the stage is doing."""

    def __init__(
        self,
        step: Callable[[], Any],
        scheduler: SchedulerView,
        client: HintClient | None = None,
    ) -> None:
        self.step = step
        self.scheduler = scheduler
        self.client = client or HintClient()
        self._phase: str | None = "unset"
        self._queue: tuple[int, int] | None = None

    def __call__(self) -> Any:
        """One engine step, with hints for what changed."""
        out = self.step()
        sched = self.scheduler
        waiting, running = len(sched.waiting), len(sched.running)
        if waiting == running == 0:
            phase = None
        else:
            phase = "prefill" if sched.last_step_prefill else "decode"
        if phase != self._phase:
            self._phase = phase
            if phase is None:
                self.client.idle()
            else:
                self.client.busy(phase)
        if (waiting, running) != self._queue:
            self._queue = (waiting, running)
            self.client.queue(waiting, running=running)
        self.client.heartbeat()
        return out

    def handoff(self) -> None:
        """A request left this stage for the next one."""
        self.client.handoff()
