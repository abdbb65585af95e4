"""Per-GPU runtime state of the agent: its control loop, counters, window and baseline model.

`GpuRuntime` is owned by `triserve.node_agent.agent.NodeAgent`, one per GPU on the node. It
keeps the monotone counters the exporter publishes (they survive policy switches, which
rebuild the `ControlLoop`), the accumulators of the current report window, and a
`BaselineModel` — the agent's own estimate of what the GPU would have drawn at PMU-default
clocks, learned only from its own samples taken while the GPU ran settled at default.

Tri-serve locks memory-bound decode and stalls whenever it sees them, so the agent would
almost never see those states at default. A *baseline probe* fills the gap: at most once per
`ProbeSettings.interval_s`, while the loop holds a lock in a state whose bin has few samples,
the runtime asks the loop (`ControlLoop.hold_default`, the loop stays the only actuator) for
a few ticks at the PMU default — enough for the clock to settle and a few samples to be
taken. A probe only raises clocks, so it can only shorten latency; it costs a little energy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from triserve.api.status import GpuState
from triserve.control import ControlLoop, Decision, Reason, TickResult
from triserve.control.phases import ActivityClass, classify_activity
from triserve.gpu.backend import GpuIdentity, GpuSample
from triserve.node_agent.gpumap import Placement
from triserve.telemetry import StageObservation

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


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """Baseline probes: how often, how long to settle and how many samples to take.

    `interval_s` 0 disables probes. A probe holds the PMU default for
    ``settle ticks + measure_ticks + 1`` ticks (the first tick's sample still covers the
    lock); settle ticks are at least `min_settle_ticks` and cover `settle_s`, the time a
    clock change takes to show in a whole sample period. Bins with `enough_samples` or more
    are not probed.
    """

    interval_s: float = 60.0
    settle_s: float = 0.1
    min_settle_ticks: int = 2
    measure_ticks: int = 4
    enough_samples: int = 12

    def settle_ticks(self, tick_s: float) -> int:
        """Ticks at default after an unlock before a sample is trusted."""
        return max(self.min_settle_ticks, math.ceil(self.settle_s / tick_s - 1e-9))

    def hold_s(self, tick_s: float) -> float:
        """How long a probe holds the default, in seconds of the loop's clock."""
        ticks = self.settle_ticks(tick_s) + self.measure_ticks + 1
        return (ticks + 0.5) * tick_s


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
class Window:
    """Accumulators of one report window (reset after every report)."""

    start_s: float = 0.0
    seconds: float = 0.0
    energy_j: float = 0.0
    baseline_energy_j: float = 0.0
    tokens: float = 0.0
    stall_s: float = 0.0
    throttle_s: float = 0.0
    decisions: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class GpuRuntime:
    """Everything the agent tracks for one GPU."""

    identity: GpuIdentity
    state: GpuState = GpuState.RELEASED
    message: str = "no serving pod on this GPU"
    loop: ControlLoop | None = None
    placements: list[Placement] = field(default_factory=list)
    stages: tuple[StageObservation, ...] = ()
    consecutive_errors: int = 0
    last_sample: GpuSample | None = None
    last_decision: Decision | None = None
    locked: bool = False
    slo_guard_active: bool = False
    # Monotone counters since the agent started (exported as *_total).
    energy_j: float = 0.0
    stall_s: float = 0.0
    throttle_s: float = 0.0
    decisions: dict[str, int] = field(default_factory=dict)
    slo_guard_trips: int = 0
    pipeline_capped_s: float = 0.0
    # Last report window's results (exported as gauges).
    tokens_per_joule: float = 0.0
    baseline_tokens_per_joule: float = 0.0
    window: Window = field(default_factory=Window)
    baseline: BaselineModel = field(default_factory=BaselineModel)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    probes: int = 0
    next_probe_s: float = 0.0
    # Sample periods in a row the GPU spent at default, and the previous sample's bin.
    default_ticks: int = 0
    _at_default: bool = True
    _last_bin: int | None = None

    @property
    def index(self) -> int:
        """Node-local GPU index."""
        return self.identity.index

    @property
    def governed(self) -> bool:
        """True while a control loop runs on the GPU (Enforce or Observe)."""
        return self.loop is not None

    def attach(self, loop: ControlLoop, state: GpuState, message: str) -> None:
        """Start governing with `loop` (a fresh loop: its stats start at zero)."""
        self.loop = loop
        self.state = state
        self.message = message
        self.consecutive_errors = 0
        # The first period of the new loop is the one since this GPU's last sample.
        loop.last_sample = self.last_sample

    def detach(self, state: GpuState, message: str) -> None:
        """Stop governing (the caller has restored the GPU's defaults)."""
        self.loop = None
        self.state = state
        self.message = message
        self.locked = False
        self.slo_guard_active = False
        self.last_decision = None
        # The caller has just reset the clocks: they settle from here.
        self._at_default = True
        self.default_ticks = 0

    def observe_unmanaged(self, sample: GpuSample) -> None:
        """A tick of a GPU no loop governs: keep the sample for the exporter and the bins."""
        self.last_sample = sample
        self._at_default = True
        self.default_ticks += 1
        self._last_bin = baseline_bin(sample, self._running())

    def account(self, result: TickResult) -> None:
        """Fold one tick's `TickResult` into the counters, the window and the baseline.

        The result's sample covers the period since the previous tick, which ran as the
        loop left the GPU then (`result.at_default_before`).
        """
        sample = result.sample
        self.last_sample = sample
        self.last_decision = result.decision
        self.locked = self.loop is not None and self.loop.applied_lock_mhz is not None
        period_at_default = result.at_default_before
        self.default_ticks = self.default_ticks + 1 if period_at_default else 0
        bin_ = baseline_bin(sample, self._running())
        steady = bin_ == self._last_bin
        self._last_bin = bin_
        energy_j, span_s, dt_s = result.energy_j, result.span_s, result.dt_s
        power_w = energy_j / span_s if span_s > 0 else sample.power_mw / 1000.0
        w = self.window
        self.energy_j += energy_j
        w.seconds += dt_s
        w.energy_j += energy_j
        if not period_at_default:
            w.baseline_energy_j += self.baseline.default_power_w(bin_, power_w) * dt_s
        else:
            w.baseline_energy_j += energy_j
            at_default_now = self.loop is None or self.loop.at_default
            settle = self.probe.settle_ticks(result.dt_s or self._tick_s())
            # Learn only settled, steady periods whose end did not change the clocks: a
            # period that ends in a lock saw a phase change (e.g. prefill into decode).
            if at_default_now and steady and span_s > 0 and self.default_ticks > settle:
                self.baseline.observe_default(bin_, power_w)
        self._count(result)
        self._maybe_probe(result.now_s, bin_)

    def _running(self) -> int:
        return sum(o.serving.running for o in self.stages if o.serving is not None)

    def _tick_s(self) -> float:
        return self.loop.settings.control_interval_s if self.loop is not None else 0.05

    def _count(self, result: TickResult) -> None:
        """Fold one tick into the monotone counters (exported as *_total) and the window."""
        w, dt_s = self.window, result.dt_s
        if result.stalled:
            self.stall_s += dt_s
            w.stall_s += dt_s
        if result.throttled:
            self.throttle_s += dt_s
            w.throttle_s += dt_s
        if result.decision.guard_tripped:
            self.slo_guard_trips += 1
        if result.decision.reason is Reason.PIPELINE:
            self.pipeline_capped_s += dt_s
        reason = result.decision.reason.value
        self.decisions[reason] = self.decisions.get(reason, 0) + 1
        w.decisions[reason] = w.decisions.get(reason, 0) + 1
        self.slo_guard_active = result.decision.reason is Reason.SLO_GUARD

    def _maybe_probe(self, now_s: float, bin_: int) -> None:
        """Start a baseline probe if a lock is held in a bin with few default samples."""
        loop, p = self.loop, self.probe
        if loop is None or p.interval_s <= 0 or not loop.actuate:
            return
        if loop.at_default or loop.holding_default or now_s < self.next_probe_s:
            return
        decision = loop.last_decision
        # Never lift a thermal cap: that lock protects the GPU, not energy.
        if decision is None or decision.reason is Reason.THERMAL:
            return
        if self.baseline.samples(bin_) >= p.enough_samples:
            return
        loop.hold_default(now_s + p.hold_s(loop.settings.control_interval_s))
        self.next_probe_s = now_s + p.interval_s
        self.probes += 1

    def close_window(self, now_s: float) -> Window:
        """End the report window: update the tokens/J gauges and start a new window."""
        w = self.window
        if w.energy_j > 0:
            self.tokens_per_joule = w.tokens / w.energy_j
            base_j = max(w.baseline_energy_j, w.energy_j)
            self.baseline_tokens_per_joule = w.tokens / base_j
        self.window = Window(start_s=now_s)
        return w
