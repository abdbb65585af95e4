"""What a GPU's stages are doing, from signals the agent really has: serving scrapes and GPM.

Component A needs to know which phase a GPU runs before it can pick a clock for it. This
module reads that from the two sources a node agent has in production:

- the serving engines' counters, scraped every scrape interval: a stage with waiting
  requests or a rising prompt-token counter is in *prefill*; one with running requests and
  only generation tokens is in *decode*; a stage that produces no tokens at all (a vocoder
  such as code2wav) is *oneshot* while it has work;
- the GPU's own pipe counters at every tick, where the device has them (NVML GPM on Hopper
  and newer): tensor-pipe activity per busy second well above what decode reaches means a
  compute-bound phase is running *now*, a tick before any scrape can say so;
- the engine's own word, where it sends stage hints (`StageObservation.hint`): a fresh hint
  names the phase running now (or that the stage is idle), ahead of both.

The result is a `PhaseView` whose `key` names the mix of (stage, phase) pairs active on the
GPU: the unit a ridge profile or the online ridge search remembers a clock for.

What a scrape cannot say stays unknown (`UNKNOWN`, listed in `PhaseView.unknown` with the
reason): an engine that exports no token counters (TGI, Triton, trtllm-serve without a
prefix) or no queue gauges gives no phase, and the controller goes by the GPU's counters. A
counter that went down (the engine restarted) counts from zero. On a disaggregated decode
worker (`StageObservation.disaggregated_decode`, or vLLM's by-source counter showing tokens
arriving by KV transfer) queued requests wait for their KV cache and transferred prompt
tokens are no prefill work, so neither reads as prefill.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from triserve.gpu.backend import Activity, GpuSample
from triserve.telemetry import ServingSnapshot, StageObservation

#: Below this share of the sample period with a kernel running, a GPU counts as idle. The
#: one definition of "idle" used by signals, phases and the agent's baseline bins.
IDLE_BUSY_FRACTION = 0.05
#: Tensor-pipe activity per busy second above which the running phase is compute-bound.
#: Memory-bound decode keeps the tensor pipe busy a few percent of cycles; prefill GEMMs
#: run it at a large fraction of peak (see docs/controller.md).
COMPUTE_TENSOR_ACTIVITY = 0.2
#: A prompt-token share of the tokens in a scrape window above which a stage is in prefill.
PREFILL_TOKEN_SHARE = 0.3

#: DRAM activity a saturated memory interface reads (DCGM documents a practical peak ~0.8).
DRAM_SATURATION = 0.8
#: Share of `DRAM_SATURATION` per busy second above which a phase counts as memory-bound.
MEMORY_BOUND_DRAM_SHARE = 0.5

PREFILL = "prefill"
DECODE = "decode"
ONESHOT = "oneshot"
#: The scrape cannot tell the phase (see the module docstring); never part of a `key`.
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class PhaseView:
    """The GPU's phase this tick.

    `key` is the sorted (stage, phase) pairs of active stages (empty when none is active);
    `compute_now` is True when the GPU's pipe counters show a compute-bound phase running
    this tick; `unknown` says, per stage whose scrape cannot tell its phase, why (e.g.
    ``tgi-stage: the engine exports no token counters``).
    """

    key: tuple[tuple[str, str], ...]
    compute_now: bool
    unknown: tuple[str, ...] = ()

    @property
    def has_prefill(self) -> bool:
        """True when a stage on the GPU is in prefill."""
        return any(phase == PREFILL for _, phase in self.key)

    @property
    def label(self) -> str:
        """Human-readable form, e.g. ``talker:decode+code2wav:oneshot``."""
        return "+".join(f"{s}:{p}" for s, p in self.key) or "idle"


def busy_fraction(sample: GpuSample) -> float:
    """Share of the sample period with a kernel running (NVML utilization.gpu)."""
    return min(max(sample.utilization_gpu_pct / 100.0, 0.0), 1.0)


class ActivityClass(enum.IntEnum):
    """What a GPU did over one sample period, from its own counters."""

    IDLE = 0
    MEMORY_BOUND = 1
    COMPUTE_BOUND = 2
    OTHER = 3


#: Activity averaged over longer than this cannot tell which phase runs now (a prefill lasts
#: about a second, a decode stretch a few): dcgm-exporter's default 30 s collection is too long.
PHASE_ACTIVITY_MAX_PERIOD_S = 2.0


def phase_activity(sample: GpuSample) -> Activity | None:
    """`sample`'s activity when it describes the tick's phase, else None.

    Per-tick GPM counters qualify, and so does a dcgm-exporter collecting every second or two.
    """
    act = sample.activity
    if act is None or (act.period_s is not None and act.period_s > PHASE_ACTIVITY_MAX_PERIOD_S):
        return None
    return act


def classify_activity(sample: GpuSample) -> ActivityClass:
    """Idle, memory- or compute-bound over `sample`'s period (the one classification).

    Compute-bound: the tensor pipe busy for `COMPUTE_TENSOR_ACTIVITY` of the busy time;
    memory-bound: otherwise, with DRAM at least half saturated. SM activity is not used: it
    reads near 1 for memory-bound kernels too. Without pipe counters of the tick's period
    (`phase_activity`) a busy GPU is OTHER.
    """
    busy = busy_fraction(sample)
    if busy < IDLE_BUSY_FRACTION:
        return ActivityClass.IDLE
    act = phase_activity(sample)
    if act is None:
        return ActivityClass.OTHER
    if act.tensor_active / busy >= COMPUTE_TENSOR_ACTIVITY:
        return ActivityClass.COMPUTE_BOUND
    if act.dram_active / busy >= MEMORY_BOUND_DRAM_SHARE * DRAM_SATURATION:
        return ActivityClass.MEMORY_BOUND
    return ActivityClass.OTHER


class PhaseTracker:
    """Turns each tick's sample and stage observations into a `PhaseView` (one per GPU)."""

    def __init__(self) -> None:
        self._last: dict[str, ServingSnapshot] = {}
        self._phase: dict[str, str | None] = {}

    def update(
        self, sample: GpuSample, stages: Sequence[StageObservation], now_s: float | None = None
    ) -> PhaseView:
        """The phase view for this tick (`now_s` None: hints are not consulted)."""
        pairs = []
        unknown = []
        hinted = 0
        for obs in stages:
            phase = self._stage_phase(obs)
            hint = obs.fresh_hint(now_s) if now_s is not None else None
            if hint is not None:
                hinted += 1
                if hint.phase is not None or not hint.has_work:
                    phase = hint.phase
            if phase == UNKNOWN and obs.serving is not None:
                unknown.append(f"{obs.stage}: {unknown_reason(obs.serving)}")
            elif phase is not None:
                pairs.append((obs.stage, phase))
        # The counters cover the period since the last tick; hints from every stage on the
        # GPU say what runs now (a prefill that just ended must not keep the boost).
        all_hinted = bool(stages) and hinted == len(stages)
        activity = ActivityClass.OTHER if all_hinted else classify_activity(sample)
        if activity is ActivityClass.MEMORY_BOUND:
            # A scrape's prefill covers the whole scrape window; per-tick pipe counters that
            # read memory-bound say it is over: the stage decodes now (a new prefill shows up
            # in the tensor pipe at the next tick, the delay the first-token floor prices).
            pairs = [(stage, DECODE if p == PREFILL else p) for stage, p in pairs]
        compute_now = activity is ActivityClass.COMPUTE_BOUND
        return PhaseView(tuple(sorted(set(pairs))), compute_now, tuple(unknown))

    def _stage_phase(self, obs: StageObservation) -> str | None:
        snap = obs.serving
        if snap is None:
            return None
        last = self._last.get(obs.stage)
        if last is not snap:
            self._last[obs.stage] = snap
            self._phase[obs.stage] = classify(last, snap, obs.disaggregated_decode)
        return self._phase.get(obs.stage)


def counter_delta(now: float, before: float) -> float:
    """What a cumulative counter counted between two scrapes; a reset counts from zero."""
    return now - before if now >= before else now


def unknown_reason(snap: ServingSnapshot) -> str:
    """Why `snap` cannot tell its stage's phase, in words for a decision's message."""
    if not snap.knows("running") and not snap.knows("waiting"):
        return "the engine exports no running/waiting gauges"
    return "the engine exports no token counters"


def classify(
    last: ServingSnapshot | None, snap: ServingSnapshot, disaggregated_decode: bool = False
) -> str | None:
    """The phase of one stage over the window between two scrapes (None: no work).

    `UNKNOWN` where the engine's metrics cannot say (see the module docstring).
    """
    if not snap.knows("running") and not snap.knows("waiting"):
        return UNKNOWN
    prefilling = snap.prefill_running or 0
    if snap.running <= 0 and snap.waiting <= 0 and prefilling <= 0:
        return None
    kv_consumer = disaggregated_decode or (snap.kv_transfer_tokens_total or 0.0) > 0
    # A decode worker's queue holds requests whose KV cache is still in transfer.
    queue_prefill = snap.waiting > 0 and not kv_consumer
    if prefilling > 0:
        return PREFILL  # the engine says requests are in their context (prefill) phase
    if not snap.knows("generation_tokens"):
        return PREFILL if queue_prefill else UNKNOWN
    if snap.generation_tokens_total <= 0:
        # No token generated yet. A stage that finished requests without ever counting a
        # token is a one-shot stage (a vocoder such as code2wav); a fresh engine's first
        # request is in its prefill.
        if snap.requests_finished_total > 0 and snap.knows("requests_finished"):
            return ONESHOT
        return DECODE if kv_consumer else PREFILL
    if last is None or snap.timestamp_s <= last.timestamp_s:
        return PREFILL if queue_prefill else DECODE
    d_prompt = counter_delta(snap.prompt_tokens_total, last.prompt_tokens_total)
    if disaggregated_decode and snap.kv_transfer_tokens_total is None:
        # The engine's prompt counter includes transferred tokens and cannot be split.
        d_prompt = 0.0
    d_gen = counter_delta(snap.generation_tokens_total, last.generation_tokens_total)
    if queue_prefill or (
        d_prompt + d_gen > 0 and d_prompt / (d_prompt + d_gen) > PREFILL_TOKEN_SHARE
    ):
        return PREFILL
    # Running requests and only generation tokens (or none this window: a decode batch that
    # waits for streamed input) is decode.
    return DECODE
