"""What each GPU cost and produced: one fold over its `TickResult`s, and the PMU-default estimate.

Every tick result of a GPU is counted once, into that GPU's `Totals` (monotone since the
agent started; the exporter publishes them as ``*_total``). A report window is no second
count: it is the difference between the totals now and the totals when the window opened
(`Totals.since`). Tokens come from the serving engines' generation counters
(`TokenMeter`), attributed to the GPUs of each pod.

`BaselineModel` is the agent's own estimate of what a GPU would have drawn at PMU-default
clocks, learned only from its own samples taken while the GPU ran settled at default; the
states Tri-serve always locks are measured by baseline probes (`triserve.control.probes`).

Used by `triserve.node_agent.gpus.GpuRuntime` (one `Totals` and `BaselineModel` per GPU) and
`triserve.node_agent.agent.NodeAgent` (one `TokenMeter` per node).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Protocol

from prometheus_client import Histogram

from triserve.control import Reason, TickResult
from triserve.control.phases import ActivityClass, classify_activity
from triserve.gpu.backend import GpuSample
from triserve.gpu.idle_powers import IdlePowers
from triserve.telemetry import ServingSnapshot

#: How the baseline (PMU-default) tokens per joule are estimated; published in reports.
BASELINE_METHOD = (
    "counterfactual from the agent's own samples: every tick is binned by what the GPU did, "
    "read from that tick's own counters (idle; compute-bound, tensor pipe busy; "
    "memory-bound, DRAM at least half saturated; other) and the running requests of its "
    "serving engines (log2 "
    "buckets); ticks under a triserve clock lock are re-priced at the mean power this GPU "
    "drew in the same bin at settled PMU-default clocks, learned only after 2 or more ticks "
    "at default, when the bin is the same as the tick before and the tick does not lock; "
    "states triserve always locks (decode, stalls) are measured by baseline probes, a few "
    "ticks handed back to the PMU default, at most one per GPU a minute by default; where a "
    "bin has no sample the actual power is used, so the estimate errs low; in Observe mode "
    "nothing is locked and the estimate is the measured energy; "
    "tokens are the serving engines' generation counters, assumed unchanged under the default"
)

#: The share of a context's idle premium a GPU parked at a low clock is assumed to keep
#: (not published; the simulator's default, docs/calibration.md).
PARKED_SHARE = 0.35

#: How Observe mode estimates what Enforce would save; published in reports.
ENFORCE_ESTIMATE_METHOD = (
    "Observe mode, stalls (D) only: every tick Tri-serve would have parked (all stages "
    "waiting on upstream work in flight) is priced at the published bare idle power of this "
    "GPU model plus an assumed 35% of its published context premium (arXiv 2605.23918; the "
    "parked power itself is not published); ticks it would leave to the PMU keep their "
    "measured energy; A and T need measurements at other clocks, which Observe never takes, "
    "so they are not estimated (Enforce measures them with baseline probes); GPU models "
    "without published idle powers get no estimate; an estimate, not a measurement"
)


def enforce_energy_j(
    result: TickResult, previous: TickResult | None, idle: IdlePowers | None
) -> float:
    """Observe mode: the energy of `result`'s period had Enforce parked it.

    `previous` is the tick that opened the period, whose decision Enforce would have applied
    (`ENFORCE_ESTIMATE_METHOD`).
    """
    if previous is None:
        return result.energy_j
    decision = previous.decision
    parks = (
        decision.reason is Reason.STALL
        and decision.target_sm_clock_mhz is not None
        and previous.signals.upstream_active
        and result.signals.stalled
    )
    if idle is None or not parks or result.span_s <= 0:
        return result.energy_j
    parked_w = idle.bare_w + PARKED_SHARE * idle.premium_w
    return min(result.energy_j, parked_w * result.dt_s)


#: Load buckets of the baseline model: running requests 0, 1, 2-3, 4-7, … 64+.
LOAD_BUCKETS = 8


def baseline_bin(sample: GpuSample, running: int) -> int:
    """The baseline model's bin of one sample: activity class x running-request bucket.

    Idle has a single bucket: an idle GPU draws the same whatever the (stale) scrape says.
    """
    activity = classify_activity(sample)
    if activity is ActivityClass.IDLE:
        bucket = 0
    else:
        bucket = min(max(running, 0).bit_length(), LOAD_BUCKETS - 1)
    return int(activity) * LOAD_BUCKETS + bucket


class BaselineModel:
    """Mean board power at settled PMU-default clocks per bin (`baseline_bin`), online."""

    def __init__(self) -> None:
        self._sum_w = [0.0] * (LOAD_BUCKETS * len(ActivityClass))
        self._n = [0] * (LOAD_BUCKETS * len(ActivityClass))

    def samples(self, bin_: int) -> int:
        """How many default samples bin `bin_` holds."""
        return self._n[bin_]

    def observe_default(self, bin_: int, power_w: float) -> None:
        """Learn from a sample period the GPU spent settled at PMU-default clocks."""
        self._sum_w[bin_] += power_w
        self._n[bin_] += 1

    def default_power_w(self, bin_: int, actual_w: float) -> float:
        """Estimated default-clock power in bin `bin_` (the actual power if it has none)."""
        if self._n[bin_] == 0:
            return actual_w
        # A lock only ever lowers power; a default estimate below the actual is noise.
        return max(self._sum_w[bin_] / self._n[bin_], actual_w)


@dataclass(slots=True)
class Totals:
    """Counts over tick results since the agent started, or over one window (`since`).

    `seconds` is governed time; `baseline_energy_j` the estimate of what the PMU default
    would have drawn over it; `enforce_energy_j` what the chosen clocks would have drawn
    (Observe mode's estimate, `ENFORCE_ESTIMATE_METHOD`; the measured energy when they were
    applied); `tokens` the generation tokens attributed to the GPU.
    """

    seconds: float = 0.0
    energy_j: float = 0.0
    baseline_energy_j: float = 0.0
    enforce_energy_j: float = 0.0
    tokens: float = 0.0
    stall_s: float = 0.0
    throttle_s: float = 0.0
    pipeline_capped_s: float = 0.0
    budget_capped_s: float = 0.0
    busy_s: float = 0.0
    slo_guard_trips: int = 0
    decisions: dict[str, int] = field(default_factory=dict)

    def fold(
        self, result: TickResult, baseline_energy_j: float, enforce_energy_j: float | None = None
    ) -> None:
        """Count one tick's result.

        `baseline_energy_j` is its period priced at the default; `enforce_energy_j` at the
        chosen clocks (None when they were applied).
        """
        dt_s = result.dt_s
        self.seconds += dt_s
        self.energy_j += result.energy_j
        self.baseline_energy_j += baseline_energy_j
        self.enforce_energy_j += result.energy_j if enforce_energy_j is None else enforce_energy_j
        if result.stalled:
            self.stall_s += dt_s
        if result.throttled:
            self.throttle_s += dt_s
        if result.budget_capped:
            self.budget_capped_s += dt_s
        self.busy_s += dt_s * min(max(result.sample.utilization_gpu_pct, 0.0), 100.0) / 100.0
        if result.decision.guard_tripped:
            self.slo_guard_trips += 1
        if result.decision.reason is Reason.PIPELINE:
            self.pipeline_capped_s += dt_s
        reason = result.decision.reason.value
        self.decisions[reason] = self.decisions.get(reason, 0) + 1

    def copy(self) -> Totals:
        """A snapshot (the start of a window)."""
        out = Totals(**{f.name: getattr(self, f.name) for f in fields(self)})
        out.decisions = dict(self.decisions)
        return out

    def since(self, start: Totals) -> Totals:
        """What was counted after the snapshot `start` (a report window)."""
        out = Totals(
            **{
                f.name: getattr(self, f.name) - getattr(start, f.name)
                for f in fields(self)
                if f.name != "decisions"
            }
        )
        out.decisions = {
            reason: count - start.decisions.get(reason, 0)
            for reason, count in self.decisions.items()
            if count - start.decisions.get(reason, 0) > 0
        }
        return out


class TokenSink(Protocol):
    """A GPU that takes a share of its pods' generation tokens."""

    def add_tokens(self, tokens: float) -> None:
        """Count `tokens` generated on this GPU."""
        ...


class TokenMeter:
    """Attributes each pod's new generation tokens to the GPUs it runs on, in equal shares."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], float] = {}

    def count(
        self,
        serving: Mapping[tuple[str, str], ServingSnapshot],
        gpus_of: Mapping[tuple[str, str], Iterable[TokenSink]],
    ) -> None:
        """Fold the latest scrapes: each pod's counter increase since the last call."""
        for key, snap in serving.items():
            total = snap.generation_tokens_total
            seen = self._seen.get(key)
            self._seen[key] = total
            # A counter that went down means the engine restarted; count from zero.
            delta = total if seen is None or total < seen else total - seen
            sinks = list(gpus_of.get(key, ()))
            if seen is None or delta <= 0 or not sinks:
                continue
            share = delta / len(sinks)
            for gpu in sinks:
                gpu.add_tokens(share)


#: Upper bounds (s) of the `triserve_agent_tick_seconds` histogram.
TICK_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class TickMeter:
    """Control steps run (periodic and hint-driven) and the wall time of each.

    `seconds` is unregistered; `triserve.node_agent.exporter.build_registry` exposes it.
    Liveness watches `ticks_run` move.
    """

    def __init__(self, node_name: str) -> None:
        self.seconds = Histogram(
            "triserve_agent_tick_seconds",
            "Wall time of one control tick for all GPUs",
            labelnames=("node",),
            buckets=TICK_BUCKETS_S,
            registry=None,
        )
        self._here = self.seconds.labels(node=node_name)
        #: Control steps run so far, hint-driven ones included.
        self.ticks_run = 0
        #: Control steps run on receipt of a hint (`triserve_agent_hint_ticks_total`).
        self.hint_ticks = 0

    def observe(self, elapsed_s: float, *, hint_steps: int = 0) -> None:
        """Count one control step (periodic, or `hint_steps` GPUs stepped by a hint)."""
        self._here.observe(elapsed_s)
        self.ticks_run += 1
        self.hint_ticks += hint_steps
