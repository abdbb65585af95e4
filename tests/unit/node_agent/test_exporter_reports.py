"""The exporter's names and labels (the dashboard contract) and the report's contents."""

from __future__ import annotations

import datetime as dt
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from triserve.api.status import ReportPhase
from triserve.node_agent.accounting import TICK_BUCKETS_S
from triserve.node_agent.agent import NodeAgent
from triserve.node_agent.errors import ErrorKind
from triserve.node_agent.exporter import MetricsServer, build_registry
from triserve.node_agent.reports import Reporter
from triserve.sim import Simulation
from triserve.simnode.node import SimNode

from .conftest import run

Make = Callable[..., tuple[NodeAgent, SimNode]]
CONTRACT = {
    "triserve_gpu_sm_clock_applied_mhz", "triserve_gpu_sm_clock_target_mhz",
    "triserve_gpu_power_watts", "triserve_gpu_temperature_celsius",
    "triserve_gpu_energy_joules_total", "triserve_gpu_stall_seconds_total",
    "triserve_gpu_throttle_seconds_total", "triserve_gpu_decisions_total",
    "triserve_gpu_tokens_per_joule", "triserve_gpu_baseline_tokens_per_joule",
    "triserve_gpu_clocks_locked", "triserve_gpu_managed", "triserve_gpu_degraded",
    "triserve_gpu_restore_failed", "triserve_gpu_pipeline_capped_seconds_total",
    "triserve_gpu_stage_active", "triserve_slo_guard_active", "triserve_slo_guard_trips_total",
    "triserve_policy_info", "triserve_agent_tick_seconds_bucket", "triserve_agent_errors_total",
}  # fmt: skip
GPU_LABELS = {"node", "gpu", "UUID", "pod", "namespace", "container", "stage", "policy"}


def test_every_contract_metric_is_exported_with_the_join_labels(
    sim: Simulation, make_agent: Make
) -> None:
    agent, node = make_agent()
    run(sim, node, 20.0)
    registry = build_registry(agent)
    names = {s.name for fam in registry.collect() for s in fam.samples}
    assert names >= CONTRACT
    for fam in registry.collect():
        if fam.name.startswith("triserve_gpu_"):
            for sample in fam.samples:
                assert set(sample.labels) >= GPU_LABELS, (fam.name, sample.labels)
    labels = {"node": "sim-node-0", "gpu": "1", "UUID": sim.backend.identity(1).uuid,
              "pod": "qwen3-omni-talker-0", "namespace": "omni", "container": "talker",
              "stage": "talker", "policy": "p1"}  # fmt: skip
    assert registry.get_sample_value("triserve_gpu_managed", labels) == 1.0
    assert (registry.get_sample_value("triserve_gpu_energy_joules_total", labels) or 0) > 0


def test_metrics_healthz_and_readyz_are_served(sim: Simulation, make_agent: Make) -> None:
    agent, node = make_agent()
    server = MetricsServer(build_registry(agent), 0, "127.0.0.1", ready=agent.is_ready)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(base + "/readyz")
        assert not_ready.value.code == 503, "ready before the first tick"
        run(sim, node, 2.0)
        assert urllib.request.urlopen(base + "/readyz").status == 200
        assert urllib.request.urlopen(base + "/healthz").status == 200
        body = urllib.request.urlopen(base + "/metrics").read().decode()
        fams = {f.name for f in text_string_to_metric_families(body)}
        assert "triserve_gpu_clocks_locked" in fams
    finally:
        server.stop()


def test_report_carries_gpus_energy_tokens_and_an_honest_baseline_method(
    sim: Simulation, make_agent: Make
) -> None:
    agent, node = make_agent()
    run(sim, node, 120.0)
    status = Reporter(agent).build(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert status.phase is ReportPhase.MANAGING and status.managed_gpus == 2
    assert status.last_report_time == "2026-01-01T00:00:00Z"
    assert status.energy.joules > 0 and status.efficiency.tokens > 0
    assert "agent's own samples" in status.efficiency.method
    assert status.efficiency.baseline_tokens_per_joule <= status.efficiency.tokens_per_joule
    assert status.pods == {"thinker": 1, "talker": 1, "code2wav": 1}
    assert {tuple(g.stages) for g in status.gpus} == {("thinker",), ("code2wav", "talker")}
    again = Reporter(agent).build(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert again.energy.joules == 0  # the window was reset
    agent.set_policy(None)
    assert Reporter(agent).build(dt.datetime.now(dt.UTC)).phase is ReportPhase.RELEASED


def test_the_final_report_after_shutdown_keeps_the_last_window(
    sim: Simulation, make_agent: Make
) -> None:
    agent, node = make_agent()
    run(sim, node, 60.0)
    agent.shutdown("SIGTERM")
    final = Reporter(agent).build(dt.datetime.now(dt.UTC))
    assert final.phase is ReportPhase.RELEASED
    assert final.energy.joules > 0 and final.efficiency.tokens > 0


def test_exported_counters_keep_growing_across_a_policy_switch(
    sim: Simulation, make_agent: Make
) -> None:
    from .conftest import policy

    agent, node = make_agent()
    run(sim, node, 60.0)
    before = {
        g: (gpu.totals.stall_s, sum(gpu.totals.decisions.values())) for g, gpu in agent.gpus.items()
    }
    assert all(decisions > 0 for _, decisions in before.values())
    agent.set_policy(policy("p2", controlIntervalMs=100))  # a new spec rebuilds every loop
    run(sim, node, 120.0)
    for g, gpu in agent.gpus.items():
        stall_s, decisions = before[g]
        assert gpu.loop is not None
        # The totals carry on from where they were; the new loop's first tick counts at once.
        assert sum(gpu.totals.decisions.values()) > decisions
        assert gpu.totals.stall_s >= stall_s
        assert gpu.loop.last_result is not None and gpu.loop.last_result.now_s > 60.0


def test_the_tick_histogram_counts_every_tick_of_this_node(
    sim: Simulation, make_agent: Make
) -> None:
    agent, node = make_agent()
    ticks = 0

    def tick(now_s: float) -> None:
        nonlocal ticks
        node.on_tick(now_s)
        ticks += 1

    sim.run_until(2.0, on_tick=tick, tick_s=0.05)
    registry = build_registry(agent)
    here = {"node": "sim-node-0"}
    assert ticks > 0
    assert registry.get_sample_value("triserve_agent_tick_seconds_count", here) == ticks
    inf = registry.get_sample_value("triserve_agent_tick_seconds_bucket", {**here, "le": "+Inf"})
    assert inf == ticks
    assert (registry.get_sample_value("triserve_agent_tick_seconds_sum", here) or 0.0) > 0.0
    bounds = {
        s.labels["le"]
        for fam in registry.collect()
        for s in fam.samples
        if s.name == "triserve_agent_tick_seconds_bucket"
    }
    assert bounds == {*(str(b) for b in TICK_BUCKETS_S), "+Inf"}


def test_every_error_kind_is_exported_at_zero_and_documented(make_agent: Make) -> None:
    agent, _node = make_agent()
    registry = build_registry(agent)
    doc = (Path(__file__).parents[3] / "docs" / "architecture.md").read_text()
    for kind in ErrorKind:
        labels = {"node": agent.node_name, "kind": kind.value}
        assert registry.get_sample_value("triserve_agent_errors_total", labels) == 0.0
        assert f"| `{kind.value}` |" in doc, f"docs/architecture.md does not list {kind.value}"
    agent.error(ErrorKind.WATCH, "list failed")
    labels = {"node": agent.node_name, "kind": "watch"}
    assert registry.get_sample_value("triserve_agent_errors_total", labels) == 1.0
    with pytest.raises(ValueError, match="not-a-kind"):
        agent.error("not-a-kind", "a kind nobody declared is a bug")
