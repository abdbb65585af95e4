"""Each tick's GPU sample: dcgm-exporter activity fills in where the device has none."""

from __future__ import annotations

from pathlib import Path

from triserve.gpu.backend import Activity
from triserve.node_agent.agent import NodeAgent
from triserve.node_agent.dcgm import DcgmGpu, DcgmSnapshot
from triserve.node_agent.safety import StateFile
from triserve.node_agent.sampling import GpuSampler
from triserve.sim import Simulation
from triserve.simnode.node import SimNode, open_simulation

from .conftest import policy, run


def _scrape(sim: Simulation, timestamp_s: float, tensor: float, dram: float) -> DcgmSnapshot:
    """A dcgm-exporter scrape giving every GPU of `sim` the same activity."""
    gpus = {}
    for index in range(sim.backend.device_count()):
        uuid = sim.backend.identity(index).uuid
        gpus[uuid] = DcgmGpu(tensor_active=tensor, dram_active=dram, sm_active=0.9, uuid=uuid)
    return DcgmSnapshot(timestamp_s, gpus)


def test_a_gpu_without_activity_counters_gets_dcgm_exporters_activity() -> None:
    sim = open_simulation("a100", seed=0)  # Ampere: no GPM, the device reports no activity
    sampler = GpuSampler(sim.backend)
    sim.run_until(1.0)
    assert sampler.sample(0).activity is None
    sampler.use_dcgm(_scrape(sim, 1.0, 0.25, 0.5), [sim.backend.identity(0)])
    # Stamped with the exporter's collection interval: the period its values average over.
    assert sampler.sample(0).activity == Activity(0.25, 0.5, 0.9, period_s=30.0)


def test_the_devices_own_activity_wins_over_dcgm_exporters() -> None:
    sim = open_simulation("reference", seed=0)  # Hopper: GPM activity of the tick's period
    sampler = GpuSampler(sim.backend)
    sampler.use_dcgm(_scrape(sim, 0.0, 0.25, 0.5), [sim.backend.identity(0)])
    sampler.sample(0)  # GPM needs a previous read to report a period
    sim.run_until(1.0)
    own = sampler.sample(0).activity
    assert own is not None and own != Activity(0.25, 0.5, 0.9)


def test_a_stale_dcgm_scrape_stops_filling_activity_and_is_reported_once() -> None:
    sim = open_simulation("a100", seed=0)
    sampler = GpuSampler(sim.backend)
    sampler.use_dcgm(_scrape(sim, 10.0, 0.25, 0.5), [sim.backend.identity(0)])
    assert sampler.expire_dcgm(15.0, max_age_s=5.0) is None, "5 s old is still fresh"
    assert sampler.sample(0).activity is not None
    assert sampler.expire_dcgm(16.0, max_age_s=5.0) == 6.0
    assert sampler.sample(0).activity is None
    assert sampler.expire_dcgm(17.0, max_age_s=5.0) is None, "dropped once, reported once"


def test_the_agents_loops_decide_on_dcgm_activity_when_the_gpu_has_none(
    tmp_path: Path,
) -> None:
    sim = open_simulation("a100", seed=0)
    agent = NodeAgent(sim.backend, "sim-node-0", StateFile(tmp_path / "state.json"))
    node = SimNode(sim, agent, scrape_interval_s=0.25)
    node.publish_pods()
    agent.set_policy(policy())
    run(sim, node, 10.0)
    managed = [g for g in agent.gpus.values() if g.loop is not None]
    assert managed, "the a100 scenario's GPUs are governed"
    for gpu in managed:
        result = gpu.loop.last_result if gpu.loop is not None else None
        assert result is not None and result.sample.activity is not None, gpu.index
        assert sim.backend.sample(gpu.index).activity is None, "the device itself has none"


def test_counters_are_refused_on_a_gpu_whose_activity_is_dcgm_exporters_30_s_average(
    tmp_path: Path,
) -> None:
    """A100: no GPM, so pipe activity comes from dcgm-exporter's 30 s collections, which
    cannot say which phase runs now. A policy asking for the Counters source gets the online
    search, and its reason says why."""
    sim = open_simulation("a100", seed=0)
    agent = NodeAgent(sim.backend, "sim-node-0", StateFile(tmp_path / "state.json"))
    node = SimNode(sim, agent, scrape_interval_s=0.25)
    node.publish_pods()
    agent.set_policy(policy(triServe={"arithmeticIntensity": {"source": "Counters"}}))
    sources: set[str] = set()
    messages: list[str] = []

    def watch(now_s: float) -> None:
        for gpu in agent.gpus.values():
            result = gpu.loop.last_result if gpu.loop is not None else None
            if result is not None and result.sample.activity is not None:
                sources.add(result.decision.source)
                messages.append(result.decision.message)

    def tick(now_s: float) -> None:
        node.on_tick(now_s)
        watch(now_s)

    sim.run_until(60.0, on_tick=tick, tick_s=0.05)
    assert "search" in sources and "counters" not in sources
    assert any("Counters refused" in m and "30 s" in m for m in messages)


def test_a_fast_dcgm_exporter_is_trusted_for_the_counter_estimate(tmp_path: Path) -> None:
    """The same GPU with dcgm-exporter collecting every second: the Counters source decides."""
    sim = open_simulation("a100", seed=0)
    agent = NodeAgent(
        sim.backend, "sim-node-0", StateFile(tmp_path / "state.json"), dcgm_period_s=1.0
    )
    node = SimNode(sim, agent, scrape_interval_s=0.25)
    node.publish_pods()
    agent.set_policy(policy(triServe={"arithmeticIntensity": {"source": "Counters"}}))
    sources: set[str] = set()

    def watch(now_s: float) -> None:
        for gpu in agent.gpus.values():
            if gpu.loop is not None and gpu.loop.last_result is not None:
                sources.add(gpu.loop.last_result.decision.source)

    def tick(now_s: float) -> None:
        node.on_tick(now_s)
        watch(now_s)

    sim.run_until(60.0, on_tick=tick, tick_s=0.05)
    assert "counters" in sources
