"""Per-GPU runtime state of the agent: its control loop, counters, window and baseline model.

`GpuRuntime` is owned by `triserve.node_agent.agent.NodeAgent`, one per GPU on the node. It
keeps the monotone counters the exporter publishes (they survive policy switches, which
rebuild the `ControlLoop`), the accumulators of the current report window, and a
`BaselineModel` — the agent's own estimate of what the GPU would have drawn at PMU-default
clocks, learned only from its own samples taken while the GPU ran at default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from triserve.api.status import GpuState
from triserve.control import ControlLoop, Decision
from triserve.gpu.backend import GpuIdentity, GpuSample
from triserve.node_agent.gpumap import Placement
from triserve.telemetry import StageObservation

#: How the baseline (PMU-default) tokens per joule are estimated; published in reports.
BASELINE_METHOD = (
    "counterfactual from the agent's own samples: ticks with a triserve clock lock are "
    "re-priced at the mean power this GPU drew at PMU-default clocks in the same phase "
    "(idle, compute-bound, memory-bound, other) and with the same number of running "
    "requests (log2 buckets); where no such sample exists the actual power is used, so the "
    "estimate errs low; "
    "tokens are the serving engines' generation counters, assumed unchanged under the default"
)
#: Load buckets of the baseline model: running requests 0, 1, 2-3, 4-7, … 64+.
_BINS = 8
#: Phase classes of the baseline model, from the decision's reason.
_PHASES = {"stall": 0, "default": 0, "compute": 1, "ridge": 2}


class BaselineModel:
    """Mean board power at PMU-default clocks per load bucket, learned online.

    The bucket is the number of running requests on the GPU's stages (from the serving
    scrapes), which, unlike utilisation, does not move when the clock does.
    """

    def __init__(self) -> None:
        self._sum_w = [0.0] * (_BINS * 4)
        self._n = [0] * (_BINS * 4)

    @staticmethod
    def _bin(running: int, reason: str) -> int:
        phase = _PHASES.get(reason, 3) if running > 0 else 0
        return phase * _BINS + min(max(running, 0).bit_length(), _BINS - 1)

    def observe_default(self, sample: GpuSample, running: int, reason: str) -> None:
        """Learn from a tick at which the GPU ran at PMU-default clocks."""
        b = self._bin(running, reason)
        self._sum_w[b] += sample.power_mw / 1000.0
        self._n[b] += 1

    def default_power_w(self, sample: GpuSample, running: int, reason: str) -> float:
        """Estimated default-clock power in this phase and load (else the sample's own)."""
        b = self._bin(running, reason)
        actual_w = sample.power_mw / 1000.0
        if self._n[b] == 0:
            return actual_w
        # A lock only ever lowers power; a default estimate below the actual is noise.
        return max(self._sum_w[b] / self._n[b], actual_w)


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
    # Last report window's results (exported as gauges).
    tokens_per_joule: float = 0.0
    baseline_tokens_per_joule: float = 0.0
    window: Window = field(default_factory=Window)
    baseline: BaselineModel = field(default_factory=BaselineModel)
    _loop_stall_s: float = 0.0
    _loop_trips: int = 0

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
        self._loop_stall_s = 0.0
        self._loop_trips = 0

    def detach(self, state: GpuState, message: str) -> None:
        """Stop governing (the caller has restored the GPU's defaults)."""
        self.loop = None
        self.state = state
        self.message = message
        self.locked = False
        self.slo_guard_active = False
        self.last_decision = None

    def account(self, sample: GpuSample, dt_s: float, now_s: float) -> None:
        """Fold one tick's sample (and the loop's decision, if any) into counters and window."""
        last = self.last_sample
        energy_j = 0.0
        if last is not None and sample.energy_mj >= last.energy_mj:
            energy_j = (sample.energy_mj - last.energy_mj) / 1000.0
        self.last_sample = sample
        if self.loop is None:
            return
        reasons = sample.clock_event_reasons
        throttled = reasons.is_thermal or reasons.is_power
        self.energy_j += energy_j
        w = self.window
        w.seconds += dt_s
        w.energy_j += energy_j
        running = sum(o.serving.running for o in self.stages if o.serving is not None)
        reason = self.last_decision.reason.value if self.last_decision else "default"
        if self.locked:
            w.baseline_energy_j += self.baseline.default_power_w(sample, running, reason) * dt_s
        else:
            self.baseline.observe_default(sample, running, reason)
            w.baseline_energy_j += energy_j
        if throttled:
            self.throttle_s += dt_s
            w.throttle_s += dt_s
        stats = self.loop.stats
        stall_delta = max(stats.stall_s - self._loop_stall_s, 0.0)
        self._loop_stall_s = stats.stall_s
        self.stall_s += stall_delta
        w.stall_s += stall_delta
        trips = max(stats.slo_guard_trips - self._loop_trips, 0)
        self._loop_trips = stats.slo_guard_trips
        self.slo_guard_trips += trips
        decision = self.last_decision
        if decision is not None:
            reason = decision.reason.value
            self.decisions[reason] = self.decisions.get(reason, 0) + 1
            w.decisions[reason] = w.decisions.get(reason, 0) + 1
        guard = getattr(self.loop.strategy, "guard", None)
        self.slo_guard_active = bool(guard is not None and guard.active(now_s))

    def close_window(self, now_s: float) -> Window:
        """End the report window: update the tokens/J gauges and start a new window."""
        w = self.window
        if w.energy_j > 0:
            self.tokens_per_joule = w.tokens / w.energy_j
            base_j = max(w.baseline_energy_j, w.energy_j)
            self.baseline_tokens_per_joule = w.tokens / base_j
        self.window = Window(start_s=now_s)
        return w
