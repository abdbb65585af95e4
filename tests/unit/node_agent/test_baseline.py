"""The agent's PMU-default baseline: bins from what the GPU does, learning only settled default
samples, and baseline probes that measure the states Tri-serve always locks."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from triserve.api.status import GpuState
from triserve.control import (
    ControlLoop,
    ControlSettings,
    Decision,
    ProbeSettings,
    Reason,
    TickContext,
)
from triserve.control.phases import ActivityClass
from triserve.control.phases import classify_activity as classify
from triserve.gpu.backend import (
    Activity,
    ClockEventReason,
    GpuIdentity,
    GpuSample,
    PowerLimitConstraints,
    ThermalThresholds,
)
from triserve.node_agent.accounting import LOAD_BUCKETS, baseline_bin
from triserve.node_agent.gpus import GpuRuntime

TICK_S = 0.05


def sample(util_pct: float, tensor: float, dram: float, activity: bool = True) -> GpuSample:
    """A sample with only what the classification reads filled in (SM activity reads near 1
    whenever kernels run, as real SM_ACTIVE does, so it cannot tell the phases apart)."""
    sm = 0.95 * util_pct / 100.0
    return GpuSample(
        timestamp_s=0.0, sm_clock_mhz=1980, mem_clock_mhz=2619, power_mw=300_000,
        energy_mj=0, temperature_c=40.0, utilization_gpu_pct=util_pct,
        clock_event_reasons=ClockEventReason.NONE,
        activity=(
            Activity(tensor_active=tensor, dram_active=dram, sm_active=sm) if activity else None
        ),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("util", "tensor", "dram", "expected"),
    [
        (0.0, 0.0, 0.0, ActivityClass.IDLE),
        (3.0, 0.02, 0.03, ActivityClass.IDLE),
        (100.0, 0.01, 0.80, ActivityClass.MEMORY_BOUND),  # decode at the boost clock
        (93.0, 0.02, 0.72, ActivityClass.MEMORY_BOUND),  # the same decode at a ridge lock
        (40.0, 0.004, 0.30, ActivityClass.MEMORY_BOUND),  # busy 40% of the period
        (100.0, 0.55, 0.19, ActivityClass.COMPUTE_BOUND),  # prefill
        (100.0, 0.10, 0.20, ActivityClass.OTHER),  # neither unit busy
    ],
)
def test_samples_are_binned_by_what_the_gpu_was_doing(
    util: float, tensor: float, dram: float, expected: ActivityClass
) -> None:
    assert classify(sample(util, tensor, dram)) is expected


def test_without_activity_counters_a_busy_gpu_is_other_and_an_idle_one_idle() -> None:
    assert classify(sample(80.0, 0, 0, activity=False)) is ActivityClass.OTHER
    assert classify(sample(0.0, 0, 0, activity=False)) is ActivityClass.IDLE


def test_load_buckets_split_busy_bins_but_not_idle() -> None:
    decode = sample(100.0, 0.01, 0.8)
    buckets = {baseline_bin(decode, running) for running in (0, 1, 2, 3, 4, 7, 8, 500)}
    assert buckets == {ActivityClass.MEMORY_BOUND * LOAD_BUCKETS + b for b in (0, 1, 2, 3, 4, 7)}
    assert baseline_bin(decode, 500) == ActivityClass.MEMORY_BOUND * LOAD_BUCKETS + 7
    idle = sample(0.0, 0.0, 0.0)
    assert baseline_bin(idle, 0) == baseline_bin(idle, 9)


# ---- a scripted GPU under a real ControlLoop ----------------------------------------------
PHASES = {  # activity (util %, tensor, dram), power at default and under a lock (W)
    "idle": ((0.0, 0.0, 0.0), 78.0, 74.0),
    "decode": ((100.0, 0.01, 0.8), 260.0, 190.0),
    "prefill": ((100.0, 0.55, 0.15), 700.0, 700.0),
}


class ScriptedGpu:
    """A one-GPU backend whose next sample period the test sets with `period`."""

    def __init__(self) -> None:
        self.now_s = 0.0
        self.energy_j = 0.0
        self.lock: tuple[int, int] | None = None
        self.activity = PHASES["idle"][0]

    def period(self, phase: str, power_w: float | None = None) -> None:
        """The next period: `phase`'s activity; `power_w` overrides its power (a mix)."""
        counters, default_w, locked_w = PHASES[phase]
        if power_w is None:
            power_w = locked_w if self.lock is not None else default_w
        self.now_s += TICK_S
        self.energy_j += power_w * TICK_S
        self.activity = counters

    def sample(self, index: int) -> GpuSample:
        util, tensor, dram = self.activity
        return GpuSample(
            timestamp_s=self.now_s, sm_clock_mhz=1980, mem_clock_mhz=2619, power_mw=0,
            energy_mj=round(self.energy_j * 1000), temperature_c=40.0,
            utilization_gpu_pct=util, clock_event_reasons=ClockEventReason.NONE,
            activity=Activity(tensor_active=tensor, dram_active=dram, sm_active=0.95 * util / 100),
        )  # fmt: skip

    def supported_sm_clocks_mhz(self, index: int) -> tuple[int, ...]:
        return (345, 705, 1005, 1980)

    def default_max_sm_clock_mhz(self, index: int) -> int:
        return 1980

    def thermal_thresholds_c(self, index: int) -> ThermalThresholds:
        return ThermalThresholds(92.0, 87.0, 85.0)

    def power_limit_constraints_mw(self, index: int) -> PowerLimitConstraints:
        return PowerLimitConstraints(200_000, 700_000, 700_000)

    def lock_sm_clocks(self, index: int, min_mhz: int, max_mhz: int) -> None:
        self.lock = (min_mhz, max_mhz)

    def reset_sm_clocks(self, index: int) -> None:
        self.lock = None


class LocksWhatItSees:
    """Tri-serve's shape: lock memory-bound decode and idle at once, boost compute."""

    name = "scripted"

    def __init__(self, thermal: bool = False) -> None:
        self.thermal = thermal

    def decide(self, ctx: TickContext) -> Decision:
        if self.thermal:
            return Decision(1005, Reason.THERMAL, "hot")
        kind = classify(ctx.sample)
        if kind is ActivityClass.MEMORY_BOUND:
            return Decision(1005, Reason.RIDGE, "decode")
        if kind is ActivityClass.IDLE:
            return Decision(345, Reason.STALL, "idle")
        return Decision(None, Reason.COMPUTE, "prefill")


@dataclass
class Rig:
    gpu: ScriptedGpu
    runtime: GpuRuntime
    loop: ControlLoop

    def tick(self, phase: str, power_w: float | None = None) -> Decision:
        """One sample period of `phase`, then the agent's tick (loop, then accounting)."""
        self.gpu.period(phase, power_w)
        result = self.loop.tick(self.gpu.now_s, ())
        self.runtime.account(result)
        return result.decision

    def memory_bound_samples(self) -> int:
        first = ActivityClass.MEMORY_BOUND * LOAD_BUCKETS
        return sum(self.runtime.baseline.samples(b) for b in range(first, first + LOAD_BUCKETS))


def rig(probe: ProbeSettings, *, actuate: bool = True, thermal: bool = False) -> Rig:
    gpu = ScriptedGpu()
    settings = ControlSettings(control_interval_s=TICK_S, slo_guard=False)
    loop = ControlLoop(gpu, 0, LocksWhatItSees(thermal), settings, actuate)  # type: ignore[arg-type]
    runtime = GpuRuntime(identity=GpuIdentity(0, "GPU-0", "scripted", "0"), probe=probe)
    runtime.attach(loop, GpuState.MANAGED if actuate else GpuState.OBSERVED, "test")
    r = Rig(gpu, runtime, loop)
    r.tick("prefill")
    return r


def prefill_then_decode(r: Rig, decode_ticks: int) -> None:
    """A prefill at the boost clock, then decode whose first period still holds the prefill."""
    for _ in range(6):
        r.tick("prefill")
    r.tick("decode", power_w=PHASES["prefill"][1])  # the transition tick
    for _ in range(decode_ticks):
        r.tick("decode")


def test_the_transition_tick_after_a_prefill_never_prices_decode() -> None:
    r = rig(ProbeSettings(interval_s=0))
    prefill_then_decode(r, decode_ticks=40)
    assert r.memory_bound_samples() == 0
    assert r.runtime.probes.count == 0
    compute = r.runtime.baseline.samples(ActivityClass.COMPUTE_BOUND * LOAD_BUCKETS)
    assert compute > 0  # settled prefill at default is learned
    w = r.runtime.window
    # Without a default sample of decode, locked decode is priced at its own power: no claim.
    assert w.baseline_energy_j == pytest.approx(w.energy_j)


def test_probe_samples_are_the_only_memory_bound_default_samples_learned() -> None:
    probe = ProbeSettings(interval_s=60.0, measure_ticks=4)
    r = rig(probe)
    prefill_then_decode(r, decode_ticks=1)
    assert r.runtime.probes.count == 1 and r.loop.holding_default
    held = []
    while r.loop.holding_default:
        held.append(r.tick("decode"))
        assert len(held) < 20
    assert all(d.reason is Reason.DEFAULT and "baseline probe" in d.message for d in held[:-1])
    assert r.memory_bound_samples() == probe.measure_ticks
    decode_bin = baseline_bin(r.gpu.sample(0), 0)
    # Exactly decode's default power: neither the prefill-laden transition tick nor the
    # settling ticks leaked in.
    assert r.runtime.baseline.default_power_w(decode_bin, 0.0) == pytest.approx(260.0)
    assert r.loop.applied_lock_mhz is not None  # the lock is back after the probe
    energy0, base0 = r.runtime.window.energy_j, r.runtime.window.baseline_energy_j
    for _ in range(100):
        r.tick("decode")
    assert (
        r.runtime.probes.count == 1
    )  # the bin stays short of samples, but a minute has not passed
    w = r.runtime.window
    assert w.energy_j - energy0 == pytest.approx(100 * 190.0 * TICK_S)
    assert w.baseline_energy_j - base0 == pytest.approx(100 * 260.0 * TICK_S)


def test_probes_repeat_only_after_the_interval_and_stop_when_a_bin_has_enough() -> None:
    probe = ProbeSettings(interval_s=2.0, measure_ticks=4, enough_samples=8)
    r = rig(probe)
    prefill_then_decode(r, decode_ticks=200)  # 10 s of decode
    assert r.runtime.probes.count == 2
    assert r.memory_bound_samples() == 8


@pytest.mark.parametrize("case", ["observe", "thermal", "disabled"])
def test_no_probe_in_observe_mode_under_a_thermal_cap_or_when_disabled(case: str) -> None:
    probe = ProbeSettings(interval_s=0.0 if case == "disabled" else 1.0)
    r = rig(probe, actuate=case != "observe", thermal=case == "thermal")
    prefill_then_decode(r, decode_ticks=100)
    assert r.runtime.probes.count == 0
    assert r.runtime.totals.decisions.get("default", 0) == 0
    if case == "observe":
        # Nothing is locked: the estimate is the measured energy.
        w = r.runtime.window
        assert w.baseline_energy_j == pytest.approx(w.energy_j)


def test_probe_settings_settle_at_least_two_ticks_and_cover_the_settle_time() -> None:
    p = ProbeSettings(settle_s=0.1, measure_ticks=4)
    assert p.settle_ticks(0.05) == 2
    assert p.settle_ticks(0.01) == 10
    assert p.settle_ticks(0.5) == 2
    assert p.hold_s(0.05) == pytest.approx((2 + 4 + 1 + 0.5) * 0.05)
