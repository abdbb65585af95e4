"""Per-GPU runtime state of the agent: its control loop, its counts and its baseline model.

`GpuRuntime` is owned by `triserve.node_agent.agent.NodeAgent`, one per GPU on the node. It
holds what the agent knows of the GPU (state, placements, stage observations, last sample and
decision) and folds each tick's `TickResult` once into its `Totals`, which survive policy
switches (a switch rebuilds the `ControlLoop`); a report window is the difference of the
totals since the window opened (`close_window`). Its `BaselineModel` prices ticks under a lock
at what the PMU default would have drawn (`triserve.node_agent.accounting`); the loop asks it,
through `wants_probe`, whether a baseline probe would help (`triserve.control.probes`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from triserve.api.status import GpuState, OperatingPoint
from triserve.control import (
    ControlLoop,
    Decision,
    ProbeSchedule,
    ProbeSettings,
    Reason,
    SloReadout,
    TickResult,
)
from triserve.gpu.backend import GpuBackend, GpuError, GpuIdentity, GpuSample
from triserve.gpu.idle_powers import published_idle_powers
from triserve.node_agent.accounting import BaselineModel, Totals, baseline_bin, enforce_energy_j
from triserve.node_agent.gpumap import Placement
from triserve.node_agent.stages import ServingPod
from triserve.telemetry import StageObservation

log = logging.getLogger("triserve.node_agent.agent")

#: Report windows kept per GPU as operating points (the NodeEnergyReport carries them).
OPERATING_POINTS = 4
#: States in which the agent runs no control step on the GPU (it waits on a restore).
HELD_BACK = (GpuState.DEGRADED, GpuState.RESTORE_FAILED)


@dataclass(slots=True)
class GpuRuntime:
    """Everything the agent tracks for one GPU."""

    identity: GpuIdentity
    probe: ProbeSettings = field(default_factory=ProbeSettings)
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
    #: The SLO-target controller's latest readout (policy mode Targets only).
    slo: SloReadout | None = None
    #: True while control cannot hold the latency bound or targets here (PMU default).
    bound_unheld: bool = False
    #: Monotone counts since the agent started (exported as *_total).
    totals: Totals = field(default_factory=Totals)
    # Last report window's results (exported as gauges).
    tokens_per_joule: float = 0.0
    baseline_tokens_per_joule: float = 0.0
    baseline: BaselineModel = field(default_factory=BaselineModel)
    #: The last report windows (newest last), for the operator's power-budget allocation.
    operating_points: deque[OperatingPoint] = field(
        default_factory=lambda: deque(maxlen=OPERATING_POINTS)
    )
    probes: ProbeSchedule = field(init=False)
    # The totals when the current report window opened.
    _window_start: Totals = field(default_factory=Totals)
    # Sample periods in a row the GPU spent at default, and the previous sample's bin.
    default_ticks: int = 0
    _at_default: bool = True
    _last_bin: int | None = None
    # Observe mode's estimate prices a period by the decision taken at its start.
    _previous: TickResult | None = None

    def __post_init__(self) -> None:
        self.probes = ProbeSchedule(self.probe)
        if not self.identity.uuid:
            self.state, self.message = GpuState.DEGRADED, "GPU did not answer at start-up"

    @property
    def index(self) -> int:
        """Node-local GPU index."""
        return self.identity.index

    @property
    def governed(self) -> bool:
        """True while a control loop runs on the GPU (Enforce or Observe)."""
        return self.loop is not None

    @property
    def runs(self) -> bool:
        """True unless the GPU waits on a restore (Degraded, RestoreFailed): ticks skip it."""
        return self.state not in HELD_BACK

    def attach(self, loop: ControlLoop, state: GpuState, message: str) -> None:
        """Start governing with `loop` (a fresh loop, its first period since our last sample)."""
        self.loop = loop
        self.state = state
        self.message = message
        self.consecutive_errors = 0
        loop.resume_from(self.last_sample)
        loop.use_probes(self.probes, self.wants_probe)

    def detach(self, state: GpuState, message: str) -> None:
        """Stop governing (the caller has restored the GPU's defaults)."""
        self.loop = None
        self.state = state
        self.message = message
        self.locked = False
        self.slo_guard_active = False
        self.bound_unheld = False
        self.slo = None
        self.last_decision = None
        # The caller has just reset the clocks: they settle from here.
        self._at_default = True
        self.default_ticks = 0

    def reidentify(self, identity: GpuIdentity) -> None:
        """The GPU answered with a changed identity (its MIG mode switched)."""
        self.identity = identity

    def place(self, placements: list[Placement]) -> None:
        """The serving pods the mapping puts on this GPU now."""
        self.placements = placements

    def observe_stages(self, stages: tuple[StageObservation, ...]) -> None:
        """The stage observations of this GPU's pods, from the latest scrapes and hints."""
        self.stages = stages

    def affected_by(self, pod: ServingPod) -> bool:
        """True when `pod` runs on this GPU or feeds a stage that does."""
        return any(
            p.pod.key == pod.key
            or (
                p.pod.namespace == pod.namespace
                and p.pod.pipeline == pod.pipeline
                and pod.stage in p.pod.upstream
            )
            for p in self.placements
        )

    def settle(self, state: GpuState, message: str) -> None:
        """Set state and message without changing what governs the GPU (restores, opt-outs)."""
        self.state = state
        self.message = message

    def failed_call(self) -> int:
        """One more backend call failed in a row; returns how many in a row."""
        self.consecutive_errors += 1
        return self.consecutive_errors

    def step(self, sample: GpuSample, now_s: float) -> None:
        """One control step on this tick's `sample` (raises `GpuError` from the backend)."""
        if self.loop is None:
            self.observe_unmanaged(sample)
        else:
            self.account(self.loop.tick(now_s, self.stages, sample))

    def observe_unmanaged(self, sample: GpuSample) -> None:
        """A tick of a GPU no loop governs: keep the sample for the exporter and the bins."""
        self.consecutive_errors = 0
        self.last_sample = sample
        self._at_default = True
        self.default_ticks += 1
        self._last_bin = baseline_bin(sample, self._running(self.stages))

    def account(self, result: TickResult) -> None:
        """Fold one tick's `TickResult` into the totals and the baseline model, once.

        The result's sample covers the period since the previous tick, which ran as the
        loop left the GPU then (`result.at_default_before`).
        """
        self.consecutive_errors = 0
        sample = result.sample
        self.last_sample = sample
        self.last_decision = result.decision
        self.locked = self.loop is not None and self.loop.applied_lock_mhz is not None
        self.slo_guard_active = result.decision.reason is Reason.SLO_GUARD
        self.slo = result.decision.slo
        self.bound_unheld = result.decision.bound_unheld
        period_at_default = result.at_default_before
        self.default_ticks = self.default_ticks + 1 if period_at_default else 0
        bin_ = baseline_bin(sample, self._running(self.stages))
        steady = bin_ == self._last_bin
        self._last_bin = bin_
        energy_j, span_s, dt_s = result.energy_j, result.span_s, result.dt_s
        power_w = energy_j / span_s if span_s > 0 else sample.power_mw / 1000.0
        enforce_j = None
        if self.loop is not None and not self.loop.actuate:
            # Observe: what this tick chose was never applied; price it as Enforce would run.
            idle = published_idle_powers(self.identity.name)
            enforce_j = enforce_energy_j(result, self._previous, idle)
        self._previous = result
        if not period_at_default:
            baseline_j = self.baseline.default_power_w(bin_, power_w) * dt_s
        else:
            baseline_j = energy_j
            at_default_now = self.loop is None or self.loop.at_default
            settle = self.probe.settle_ticks(result.dt_s or self._tick_s())
            # Learn only settled, steady periods whose end did not change the clocks: a
            # period that ends in a lock saw a phase change (e.g. prefill into decode).
            if at_default_now and steady and span_s > 0 and self.default_ticks > settle:
                self.baseline.observe_default(bin_, power_w)
        self.totals.fold(result, baseline_j, enforce_j)

    def wants_probe(self, sample: GpuSample, stages: Sequence[StageObservation]) -> bool:
        """True when this tick's state has too few default samples to price a lock."""
        bin_ = baseline_bin(sample, self._running(stages))
        return self.baseline.samples(bin_) < self.probe.enough_samples

    def add_tokens(self, tokens: float) -> None:
        """Count generation tokens attributed to this GPU (`accounting.TokenMeter`)."""
        self.totals.tokens += tokens

    def _running(self, stages: Sequence[StageObservation]) -> int:
        return sum(o.serving.running for o in stages if o.serving is not None)

    def _tick_s(self) -> float:
        return self.loop.settings.control_interval_s if self.loop is not None else 0.05

    @property
    def window(self) -> Totals:
        """The current report window so far (what `close_window` would return now)."""
        return self.totals.since(self._window_start)

    def close_window(self) -> Totals:
        """End the report window: update the tokens/J gauges and open the next window."""
        w = self.window
        if w.energy_j > 0:
            self.tokens_per_joule = w.tokens / w.energy_j
            base_j = max(w.baseline_energy_j, w.energy_j)
            self.baseline_tokens_per_joule = w.tokens / base_j
        if w.seconds > 0 and w.energy_j > 0:
            ceiling_mw = self.loop.power_ceiling_mw if self.loop is not None else None
            self.operating_points.append(
                OperatingPoint(
                    watts=round(w.energy_j / w.seconds, 1),
                    tokens_per_second=round(w.tokens / w.seconds, 2),
                    cap_watts=round((ceiling_mw or 0) / 1000.0, 1),
                    capped_seconds=round(w.budget_capped_s, 2),
                    busy_seconds=round(w.busy_s, 2),
                    seconds=round(w.seconds, 2),
                )
            )
        self._window_start = self.totals.copy()
        return w


def identity_of(backend: GpuBackend, index: int) -> GpuIdentity:
    """The GPU's identity; a blank UUID when it does not answer (it must not stop the rest)."""
    try:
        return backend.identity(index)
    except GpuError as exc:
        log.error("GPU %d: cannot read its identity: %s", index, exc)
        return GpuIdentity(index, "", "", "")
