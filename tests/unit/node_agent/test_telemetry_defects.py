# ruff: noqa: E501  (dcgm-exporter sample lines are long by nature)
"""One test (or a few) per numbered defect of issue 14: telemetry from real exporters and pods."""

from __future__ import annotations

import asyncio
import math
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from triserve.api.annotations import AnnotationError, parse_metrics_annotation
from triserve.api.models import LabelSelector
from triserve.node_agent.agent import NodeAgent
from triserve.node_agent.dcgm import WANTED_METRICS, ForeignScrapeError, parse_dcgm
from triserve.node_agent.dcgmsource import DcgmSource
from triserve.node_agent.exporter import MetricsServer, build_registry
from triserve.node_agent.podresources import ContainerGpus
from triserve.node_agent.promtext import ScrapeError
from triserve.node_agent.safety import StateFile
from triserve.node_agent.scraping import ScrapeLimits, Scrapers, supervise
from triserve.node_agent.serving import ENGINES, parse_serving, parse_serving_scrape
from triserve.node_agent.stages import ServingPod
from triserve.sim import Simulation
from triserve.simnode.node import SimNode
from triserve.telemetry import Histogram, ServingSnapshot

from .conftest import policy, run
from .hostile import hostile_server

REPO = Path(__file__).parents[3]


def pod(name: str, port: int = 0, path: str = "/good", **kw: object) -> ServingPod:
    defaults: dict[str, object] = {"pod_ip": "127.0.0.1", "containers": ("engine",)}
    defaults.update(kw)
    return ServingPod("omni", name, "thinker", metrics_port=port, metrics_path=path, **defaults)  # type: ignore[arg-type]


def bare_agent(sim: Simulation, tmp_path: Path) -> NodeAgent:
    agent = NodeAgent(sim.backend, "node-1", StateFile(tmp_path / "state.json"))
    agent.set_policy(policy())
    return agent


def snap(ts: float, running: int, tokens: float = 0.0) -> ServingSnapshot:
    return ServingSnapshot(ts, running, 0, 0.0, tokens, 0.0)


# ---- 1. other nodes' dcgm-exporter data ------------------------------------------------
OTHER_NODE = """\
DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{gpu="0",UUID="GPU-other",Hostname="node-2",pod="x",namespace="t",container="c"} 0.9
DCGM_FI_PROF_DRAM_ACTIVE{gpu="0",UUID="GPU-other",Hostname="node-2",pod="x",namespace="t",container="c"} 0.9
"""


def test_1_another_nodes_dcgm_scrape_is_rejected_and_never_matched_by_index() -> None:
    with pytest.raises(ForeignScrapeError, match="node-2"):
        parse_dcgm(OTHER_NODE, 1.0, "node-1")
    mixed = OTHER_NODE + 'DCGM_FI_DEV_SM_CLOCK{gpu="1",UUID="GPU-mine",Hostname="node-1"} 1980\n'
    snapshot = parse_dcgm(mixed, 1.0, "node-1")
    assert set(snapshot.gpus) == {"GPU-mine"} and snapshot.foreign_series == 2
    assert snapshot.for_gpu(0, "GPU-local-0") is None


async def test_1_a_cluster_service_url_is_counted_as_foreign(
    sim: Simulation, tmp_path: Path
) -> None:
    agent = bare_agent(sim, tmp_path)
    async with hostile_server() as base, httpx.AsyncClient() as client:
        scrapers = Scrapers(agent, client, dcgm=DcgmSource(url=f"{base}/dcgm-other"))
        await scrapers.scrape_once()
        await scrapers.dcgm_done()  # the dcgm scrape runs beside the round
    assert agent.errors["scrape-foreign"] == 1 and agent.inputs.dcgm is None


# ---- 2. +Inf kills scraping; stale data keeps driving clocks ---------------------------
async def test_2_an_inf_value_is_counted_and_the_other_pods_still_get_scraped(
    sim: Simulation, tmp_path: Path
) -> None:
    agent = bare_agent(sim, tmp_path)
    async with hostile_server() as base, httpx.AsyncClient() as client:
        port = int(base.rsplit(":", 1)[1])
        agent.set_pods([pod("bad", port, "/inf"), pod("good", port, "/good")])
        # Every round retries every pod here (no spacing by cost): each failure is counted.
        scrapers = Scrapers(agent, client, limits=ScrapeLimits(cost_spacing=0.0))
        await scrapers.scrape_once()
        await scrapers.dcgm_done()  # the dcgm scrape runs beside the round
        await scrapers.scrape_once()
        await scrapers.dcgm_done()  # the dcgm scrape runs beside the round
    assert agent.inputs.serving[("omni", "good")].running == 2
    assert ("omni", "bad") not in agent.inputs.serving
    assert agent.errors["scrape"] == 2 and scrapers.rounds == 2


async def test_2_supervise_restarts_a_crashed_task_and_counts_it() -> None:
    crashes: list[str] = []
    started = 0

    async def flaky() -> None:
        nonlocal started
        started += 1
        if started < 3:
            raise OverflowError("cannot convert float infinity to integer")
        await asyncio.Event().wait()

    task = asyncio.create_task(supervise("scrapers", flaky, lambda k, m: crashes.append(m), 0.0))
    for _ in range(1000):
        if started >= 3 or task.done():
            break
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises((asyncio.CancelledError, OverflowError)):
        await task
    assert len(crashes) == 2 and "OverflowError" in crashes[0]


def test_2_stale_serving_data_hands_every_gpu_back_to_the_pmu_and_says_so(
    sim: Simulation, make_agent: Callable[..., tuple[NodeAgent, SimNode]]
) -> None:
    agent, node = make_agent(policy())
    locked_before = False
    for until_s in range(5, 121, 5):
        run(sim, node, float(until_s))
        locked_before = any(sim.backend.locked_sm_clocks_mhz(i) for i in agent.gpus)
        if locked_before:
            break
    assert locked_before, "the controller never locked a clock on the reference scenario"
    now_s = sim.now_s
    # Scrapes stop (the scraper died); the tick keeps going.
    sim.run_until(now_s + 10.0, on_tick=agent.tick, tick_s=0.05)
    for index, gpu in agent.gpus.items():
        assert gpu.last_decision is not None
        assert gpu.last_decision.target_sm_clock_mhz is None
        assert "stale telemetry" in gpu.last_decision.message
        assert sim.backend.locked_sm_clocks_mhz(index) is None


# ---- 3. unbounded scrapes --------------------------------------------------------------
async def scrape_round(
    sim: Simulation, tmp_path: Path, paths: dict[str, str], limits: ScrapeLimits
) -> tuple[NodeAgent, Scrapers, list[str]]:
    agent = bare_agent(sim, tmp_path)
    messages: list[str] = []
    agent.error = lambda kind, message: messages.append(f"{kind}: {message}")  # type: ignore[method-assign]
    async with hostile_server() as base, httpx.AsyncClient() as client:
        port = int(base.rsplit(":", 1)[1])
        agent.set_pods([pod(name, port, path) for name, path in paths.items()])
        scrapers = Scrapers(agent, client, limits=limits)
        await scrapers.scrape_once()
        await scrapers.dcgm_done()  # the dcgm scrape runs beside the round
    return agent, scrapers, messages


async def test_3_a_trickling_pod_is_cut_off_by_the_total_deadline(
    sim: Simulation, tmp_path: Path
) -> None:
    # Each byte arrives within any per-read timeout; only a total deadline ends this.
    limits = ScrapeLimits(deadline_s=1.0, max_body_bytes=1 << 20)
    paths = {"slow": "/trickle", "good": "/good"}
    agent, scrapers, messages = await scrape_round(sim, tmp_path, paths, limits)
    assert scrapers.rounds == 1 and agent.inputs.serving[("omni", "good")].running == 2
    assert [m for m in messages if "no complete answer within 1 s" in m]


async def test_3_a_huge_body_is_abandoned_at_the_cap(sim: Simulation, tmp_path: Path) -> None:
    limits = ScrapeLimits(deadline_s=30.0, max_body_bytes=256 * 1024)
    agent, scrapers, messages = await scrape_round(sim, tmp_path, {"big": "/huge"}, limits)
    assert scrapers.rounds == 1 and ("omni", "big") not in agent.inputs.serving
    assert [m for m in messages if "body over 262144 bytes" in m]


# ---- 4. one bad series voids the DCGM scrape -------------------------------------------
def test_4_an_unconvertible_series_costs_only_itself() -> None:
    text = """\
DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{gpu="0",UUID="GPU-a",Hostname="n"} 0.31
DCGM_FI_PROF_DRAM_ACTIVE{gpu="0",UUID="GPU-a",Hostname="n"} 0.62
DCGM_FI_PROF_SM_ACTIVE{gpu="1",UUID="GPU-b",Hostname="n"} ERROR - FAILED TO CONVERT TO STRING
"""
    snapshot = parse_dcgm(text, 1.0, "n")
    activity = snapshot.gpus["GPU-a"].activity()
    assert activity is not None and (activity.tensor_active, activity.dram_active) == (0.31, 0.62)
    assert snapshot.skipped_series == 1


# ---- 5. MIG ------------------------------------------------------------------------------
def test_5_a_gpu_in_mig_mode_is_observed_never_locked(
    sim: Simulation, make_agent: Callable[..., tuple[NodeAgent, SimNode]]
) -> None:
    agent, node = make_agent(policy())
    uuid = sim.backend.identity(0).uuid
    # The simulated dcgm-exporter, with GPU 0 split into MIG instances as a real one shows it.
    exposition = sim.dcgm_exposition
    mig_line = (
        f'DCGM_FI_PROF_GR_ENGINE_ACTIVE{{gpu="0",UUID="{uuid}",GPU_I_PROFILE="1g.10gb",GPU_I_ID="7",'
        f'Hostname="sim-node-0"}} 0.5\n'
    )
    sim.dcgm_exposition = lambda hostname=None: exposition(hostname) + mig_line  # type: ignore[method-assign]
    run(sim, node, 30.0)
    gpu = agent.gpus[0]
    assert gpu.state.value == "Observed" and "MIG mode" in gpu.message
    assert sim.backend.locked_sm_clocks_mhz(0) is None
    assert sim.backend.locked_sm_clocks_mhz(1) is not None or agent.gpus[1].state.value == "Managed"


def _split_gpu0_into_mig(sim: Simulation, instances: dict[str, str]) -> dict[str, str]:
    """Make the simulated dcgm-exporter show GPU 0 as MIG instances: {instance id: "ns/pod"}.

    Returns the dict, which the test may change while the agent runs ("" = no pod).
    """
    uuid = sim.backend.identity(0).uuid
    exposition = sim.dcgm_exposition

    def with_mig(hostname: str | None = None) -> str:
        lines = []
        for instance_id, owner in instances.items():
            ns, _, name = owner.partition("/")
            pod_labels = f',namespace="{ns}",pod="{name}",container="c"' if owner else ""
            lines.append(
                f'DCGM_FI_PROF_GR_ENGINE_ACTIVE{{gpu="0",UUID="{uuid}",GPU_I_PROFILE="3g.40gb",'
                f'GPU_I_ID="{instance_id}",Hostname="sim-node-0"{pod_labels}}} 0.5'
            )
        return exposition(hostname) + "\n".join(lines) + "\n"

    sim.dcgm_exposition = with_mig  # type: ignore[method-assign]
    return instances


def _thinker(sim: Simulation) -> str:
    place = next(p for p in sim.placements if p.gpu_index == 0)
    return f"{place.namespace}/{place.pod}"


def test_5_a_policy_may_govern_a_mig_gpu_whose_every_instance_runs_its_pods(
    sim: Simulation, make_agent: Callable[..., tuple[NodeAgent, SimNode]]
) -> None:
    instances = _split_gpu0_into_mig(sim, {"1": _thinker(sim), "2": _thinker(sim)})
    agent, node = make_agent(policy(mig={"mode": "GovernWhenExclusive"}))
    run(sim, node, 30.0)
    assert agent.gpus[0].state.value == "Managed", agent.gpus[0].message
    # Another tenant is scheduled onto instance 2: the GPU is handed back at once.
    instances["2"] = "other-team/batch-job"
    run(sim, node, 60.0)
    gpu = agent.gpus[0]
    assert gpu.state.value == "Observed"
    assert "instance 2 runs other-team/batch-job" in gpu.message
    assert sim.backend.locked_sm_clocks_mhz(0) is None


@pytest.mark.parametrize(
    ("spec", "owners", "why"),
    [
        ({}, {"1": "thinker"}, "see spec.mig.mode"),  # the default: observe
        (
            {"mig": {"mode": "GovernWhenExclusive"}},
            {"1": "thinker", "2": ""},
            "instance 2 has no pod",
        ),
        ({"mig": {"mode": "GovernWhenExclusive"}}, {"1": "ns/other"}, "instance 1 runs ns/other"),
    ],
)
def test_5_a_mig_gpu_is_observed_unless_the_policy_owns_every_instance(
    sim: Simulation,
    make_agent: Callable[..., tuple[NodeAgent, SimNode]],
    spec: dict[str, Any],
    owners: dict[str, str],
    why: str,
) -> None:
    _split_gpu0_into_mig(
        sim, {k: _thinker(sim) if v == "thinker" else v for k, v in owners.items()}
    )
    agent, node = make_agent(policy(**spec))
    run(sim, node, 30.0)
    gpu = agent.gpus[0]
    assert gpu.state.value == "Observed" and why in gpu.message, gpu.message
    assert sim.backend.locked_sm_clocks_mhz(0) is None


def test_5_an_unknown_mig_mode_is_refused_naming_the_field() -> None:
    from pydantic import ValidationError

    from triserve.api.models import EnergyPolicySpec

    with pytest.raises(ValidationError, match=r"mig\.mode"):
        EnergyPolicySpec.model_validate({"mig": {"mode": "Always"}})


def test_5_mig_device_ids_from_pod_resources_resolve_to_the_parent_gpu() -> None:
    from triserve.gpu.backend import GpuIdentity
    from triserve.node_agent.gpumap import GpuIndex

    index = GpuIndex([GpuIdentity(3, "GPU-abc", "A100", "0")])
    assert index.resolve("MIG-GPU-abc/7/0") == 3


# ---- 6. data-parallel engines summed -----------------------------------------------------
def test_6_each_gpu_of_a_data_parallel_server_sees_its_own_engine(
    sim: Simulation, tmp_path: Path
) -> None:
    agent = bare_agent(sim, tmp_path)
    uuids = [sim.backend.identity(i).uuid for i in range(2)]
    agent.set_pods([pod("dp", 8000)])
    agent.set_pod_resources([ContainerGpus("omni", "dp", "engine", "nvidia.com/gpu", tuple(uuids))])
    scrape = parse_serving_scrape(
        'vllm:num_requests_running{engine="0"} 5\nvllm:num_requests_running{engine="1"} 3\n', 1.0
    )
    agent.set_serving(("omni", "dp"), scrape.total, scrape.engines)
    agent.tick(1.0)
    running = [agent.gpus[i].stages[0].serving for i in range(2)]
    assert [s.running if s else None for s in running] == [5, 3]
    assert scrape.total.running == 8


# ---- 7. bad values become numbers --------------------------------------------------------
@pytest.mark.parametrize(
    "value", ["9223372036854775807", "+Inf", "NaN", "1.25", "-0.5", "140737488355328"]
)
def test_7_sentinels_non_finite_and_out_of_range_activity_is_unknown(value: str) -> None:
    text = (
        f'DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{{gpu="0",UUID="GPU-a",Hostname="n"}} {value}\n'
        'DCGM_FI_PROF_DRAM_ACTIVE{gpu="0",UUID="GPU-a",Hostname="n"} 0.5\n'
    )
    gpu = parse_dcgm(text, 1.0, "n").gpus["GPU-a"]
    assert gpu.tensor_active is None and gpu.activity() is None


def test_7_an_inf_token_counter_is_rejected_not_summed_into_the_window() -> None:
    with pytest.raises(ScrapeError, match="non-finite"):
        parse_serving("vllm:num_requests_running 1\nvllm:generation_tokens_total +Inf\n", 1.0)


def test_7_duplicate_series_count_once() -> None:
    line = 'vllm:generation_tokens_total{model_name="m"} 100\n'
    assert (
        parse_serving("vllm:num_requests_running 1\n" + line * 3, 1.0).generation_tokens_total
        == 100
    )


@pytest.mark.parametrize("body", ["", "# HELP x y\n# TYPE x gauge\n", "# EOF\n"])
def test_7_an_empty_or_comment_only_scrape_is_an_error(body: str) -> None:
    with pytest.raises(ScrapeError, match="no samples"):
        parse_dcgm(body, 1.0, "n", accept_unlabelled=True)


def test_7_a_histogram_that_went_down_is_a_reset_not_a_negative_window() -> None:
    before = Histogram((0.1, math.inf), (50.0, 80.0), 9.0, 80.0)
    after = Histogram((0.1, math.inf), (2.0, 3.0), 0.4, 3.0)
    window = after.minus(before)
    # Everything after the reset is new: the window is the new histogram, whole.
    assert window.cumulative_counts == (2.0, 3.0) and window.count == 3.0
    assert window.sum_s == 0.4


# ---- 8. tenant isolation -----------------------------------------------------------------
def test_8_only_pods_the_policy_selects_are_scraped(sim: Simulation, tmp_path: Path) -> None:
    agent = NodeAgent(sim.backend, "node-1", StateFile(tmp_path / "s.json"))
    agent.set_policy(policy(podSelector={"matchLabels": {"team": "a"}}))
    agent.set_pods(
        [pod("mine", 8000, labels={"team": "a"}), pod("theirs", 8000, labels={"team": "b"})]
    )
    assert [key for key, _url in agent.scrape_targets()] == [("omni", "mine")]
    assert LabelSelector is not None


def test_8_upstream_signals_come_only_from_the_same_namespace(
    sim: Simulation, tmp_path: Path
) -> None:
    agent = bare_agent(sim, tmp_path)
    uuid = sim.backend.identity(0).uuid
    talker = ServingPod(
        "omni", "talker", "talker", metrics_port=1, pod_ip="127.0.0.1", containers=("c",)
    )
    ours = ServingPod("omni", "thinker", "thinker", metrics_port=1, pod_ip="127.0.0.1")
    foreign = ServingPod("other", "thinker", "thinker", metrics_port=1, pod_ip="127.0.0.1")
    agent.set_pods([talker, ours, foreign])
    agent.set_pod_resources([ContainerGpus("omni", "talker", "c", "nvidia.com/gpu", (uuid,))])
    agent.set_serving(ours.key, snap(1.0, 1))
    agent.set_serving(foreign.key, snap(1.0, 99))
    agent.tick(1.0)
    (observation,) = agent.gpus[0].stages
    assert [s.running for s in observation.upstream_serving] == [1]


@pytest.mark.parametrize(
    "value",
    [
        "8000/../admin",
        "8000/metrics?x=1",
        "8000@evil/x",
        "8000//x",
        "99999",
        "80 80",
        "8000/%2e%2e",
    ],
)
def test_8_the_metrics_annotation_is_a_port_and_a_plain_path(value: str) -> None:
    with pytest.raises(AnnotationError):
        parse_metrics_annotation(value)
    assert parse_metrics_annotation(":8000/v1/metrics") == (8000, "/v1/metrics")


# Slow: waits out the exporter's per-connection timeouts on real sockets (about 5 s).
@pytest.mark.slow
def test_8_the_exporter_bounds_connections_and_binds_the_address_given(
    sim: Simulation, tmp_path: Path
) -> None:
    agent = bare_agent(sim, tmp_path)
    server = MetricsServer(build_registry(agent), 0, "127.0.0.1", timeout_s=0.3, max_connections=4)
    assert server.host == "127.0.0.1"
    server.start()
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(40)]
    try:
        # Every idle connection is either being served (bounded) or already closed.
        peak = threading.active_count() - before
        assert peak <= 4
        # Once the idle ones time out, a real scrape is answered.
        body = b""
        for _ in range(200):
            try:
                body = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=2.0).content
                break
            except httpx.HTTPError:
                threading.Event().wait(0.05)
        assert b"triserve_agent_errors_total" in body
        assert server.rejected_connections > 0
    finally:
        for conn in idle:
            conn.close()
        server.stop()


# ---- 9. docs -----------------------------------------------------------------------------
def test_9_the_telemetry_page_names_every_field_and_metric_the_agent_reads() -> None:
    page = (REPO / "docs" / "telemetry.md").read_text()
    # Each engine's preferred running and generation series (alternate spellings such as
    # `sglang_` are named by prefix on the page).
    preferred = {c[0].split("{")[0] for e in ENGINES for c in (e.running, e.generation_tokens) if c}
    names = set(WANTED_METRICS) | preferred
    assert sorted(n for n in names if n not in page) == []
    for topic in ("MIG", "engine", "SM_ACTIVE", "stale", "--dcgm-discover", "NetworkPolicy"):
        assert topic in page
