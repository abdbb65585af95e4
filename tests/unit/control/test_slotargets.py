"""SLO-target mode: clocks go as low as absolute latency targets allow, and back when at risk."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from prometheus_client.samples import Sample

from tests.unit.decode_stage import DecodeStage
from triserve.api.models import EnergyPolicySpec
from triserve.api.status import NodeEnergyReportStatus
from triserve.control import ControlSettings, DeviceLimits, Reason, SloTargetSetting
from triserve.control.slotargets import SloTargetController
from triserve.node_agent.exporter import build_registry
from triserve.node_agent.reports import Reporter
from triserve.sim import Simulation
from triserve.simnode import AgentRun

from .conftest import drive, short


def _limits() -> DeviceLimits:
    return DeviceLimits.from_backend(Simulation(short("reference", 10.0)).backend, 0)


def _run(ctl: SloTargetController, stage: DecodeStage, start_s: float, end_s: float,
         latency_s: float) -> float:  # fmt: skip
    limits, now, tripped_at = _limits(), start_s, -1.0
    while now < end_s:
        if ctl.update(now, [stage.observe(now, latency_s)], limits) and tripped_at < 0:
            tripped_at = now
        now += 0.25
    return tripped_at


def test_a_stage_well_inside_its_target_gets_a_lower_decode_clock_step_by_step() -> None:
    target = SloTargetSetting("inter_token", 0.05, 0.99, stage="talker")
    ctl = SloTargetController([target], margin_pct=10.0, move_every_s=1.0)
    stage = DecodeStage()
    _run(ctl, stage, 0.0, 5.0, 0.02)
    first = ctl.decode_mhz
    assert first is not None and first < _limits().default_max_mhz
    _run(ctl, stage, 5.0, 15.0, 0.02)
    assert ctl.decode_mhz is not None and ctl.decode_mhz < first, "keeps going while inside"
    assert ctl.compute_mhz is None, "inter-token latency moves only the decode ceiling"
    (m,) = ctl.readout.measured
    assert 0.3 < m.headroom_used < 0.5 and m.over_share == 0.0


def test_a_target_at_risk_trips_at_once_and_raises_the_ceiling() -> None:
    target = SloTargetSetting("inter_token", 0.05, 0.99, stage="talker")
    ctl = SloTargetController([target], margin_pct=10.0, move_every_s=1.0, window_s=2.0)
    stage = DecodeStage()
    _run(ctl, stage, 0.0, 20.0, 0.02)
    low = ctl.decode_mhz
    assert low is not None
    tripped_at = _run(ctl, stage, 20.0, 23.0, 0.07)
    assert 20.0 <= tripped_at < 21.0, "the guard trips on the first scrapes over target"
    assert ctl.active(tripped_at + 1.0) and ctl.trips >= 1
    assert ctl.decode_mhz is None or ctl.decode_mhz > low
    assert "talker" in ctl.message and "above target" in ctl.message


def test_a_target_missed_at_boost_is_reported_unmet() -> None:
    target = SloTargetSetting("inter_token", 0.05, 0.99, stage="talker")
    ctl = SloTargetController([target], move_every_s=1.0, window_s=2.0)
    _run(ctl, DecodeStage(), 0.0, 30.0, 0.07)
    assert ctl.decode_mhz is None and ctl.readout.unmet


def test_a_targets_policy_carries_its_targets_and_drops_the_relative_guard() -> None:
    spec = EnergyPolicySpec.model_validate(
        {
            "slo": {
                "mode": "Targets",
                "targets": [
                    {"pipeline": "qwen3-omni", "ttftSeconds": 1.0, "e2eSeconds": 50},
                    {"pipeline": "qwen3-omni", "stage": "talker", "quantile": 0.95,
                     "interTokenSeconds": 0.04},
                ],
            }
        }
    )  # fmt: skip
    settings = ControlSettings.from_policy(spec)
    assert {(t.metric, t.stage, t.quantile) for t in settings.slo_targets} == {
        ("ttft", None, 0.99),
        ("e2e", None, 0.99),
        ("inter_token", "talker", 0.95),
    }
    assert ControlSettings.from_policy(EnergyPolicySpec()).slo_targets == ()


class _LastReport:
    """The node's report and metrics at the last tick before `at_s` (the agent still governs)."""

    def __init__(self, at_s: float) -> None:
        self.at_s = at_s
        self.status: NodeEnergyReportStatus | None = None
        self.samples: list[Sample] = []

    def __call__(self, run: AgentRun, now_s: float) -> None:
        if self.status is not None or now_s < self.at_s:
            return
        self.status = Reporter(run.agent).build(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
        self.samples = [s for m in build_registry(run.agent).collect() for s in m.samples]


def _reference_targets(ttft_s: float, e2e_s: float) -> ControlSettings:
    targets = (
        SloTargetSetting("ttft", ttft_s, 0.99, "qwen3-omni"),
        SloTargetSetting("e2e", e2e_s, 0.99, "qwen3-omni"),
    )
    return replace(ControlSettings(), slo_targets=targets)


def test_loose_targets_save_more_than_the_relative_bound_and_stay_met() -> None:
    scenario = short("reference", 480.0)
    relative = drive(scenario, ControlSettings())
    last = _LastReport(470.0)
    loose = drive(scenario, _reference_targets(2.0, 80.0), after_tick=last)
    energy = {n: r.sim.report().energy_j for n, r in (("relative", relative), ("loose", loose))}
    assert energy["loose"] < 0.95 * energy["relative"], energy
    report = loose.sim.report()
    assert report.ttft_p99_s is not None and report.ttft_p99_s < 2.0
    assert report.e2e_p99_s is not None and report.e2e_p99_s < 80.0
    status = last.status
    assert status is not None and status.slo is not None
    assert 0 < status.slo.headroom_used_percent < 100
    met = next(c for c in status.conditions if c.type == "SloTargetsMet")
    assert met.status == "True", met.message
    used = [
        s.value
        for s in last.samples
        if s.name == "triserve_slo_target_headroom_used_ratio" and s.labels["metric"] == "e2e"
    ]
    assert used and all(0 < u < 1 for u in used), used


def test_targets_no_clock_can_meet_leave_the_gpus_at_default_and_say_so() -> None:
    last = _LastReport(235.0)
    run = drive(short("reference", 240.0), _reference_targets(0.01, 1.0), after_tick=last)
    late = [t for t in run.ticks[0] if t.now_s > 180.0]
    assert late and all(t.decision.target_sm_clock_mhz is None for t in late)
    assert any(t.decision.reason is Reason.SLO_GUARD for t in late)
    status = last.status
    assert status is not None
    met = next(c for c in status.conditions if c.type == "SloTargetsMet")
    assert met.status == "False" and met.reason == "MissedAtDefault", met
    held = next(c for c in status.conditions if c.type == "LatencyBoundHeld")
    assert held.status == "False" and "0" in held.message, held
    unheld = [s for s in last.samples if s.name == "triserve_slo_bound_unheld"]
    assert any(s.value == 1.0 for s in unheld), unheld
