"""dcgm-exporter through the agent's scrape path: host labels, foreign GPUs, slow exporters.

The TITAN V fixture (tests/fixtures/exporters, NVIDIA/dcgm-exporter issue #58) is what a GPU
Operator exporter without `NODE_NAME` prints: `Hostname` is its own pod name.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

from triserve.api.models import EnergyPolicySpec
from triserve.node_agent.agent import NodeAgent, PolicyRef
from triserve.node_agent.dcgmsource import DcgmSource, DcgmTarget
from triserve.node_agent.safety import StateFile
from triserve.node_agent.scraping import ScrapeLimits, Scrapers
from triserve.simnode import open_simulation

from ...support.httpserver import http_server

CORPUS = Path(__file__).parents[2] / "fixtures" / "exporters"
TITANV = (CORPUS / "dcgm-titanv-k8s-labels.prom").read_text()


class _Found(DcgmSource):
    """A source that 'discovered' the exporter pod `pod_name` at `url`."""

    def __init__(self, url: str, pod_name: str) -> None:
        super().__init__(discover_selector="app=nvidia-dcgm-exporter")
        self._target = DcgmTarget(url, node_local=True, pod_name=pod_name)

    async def target(self) -> DcgmTarget | None:
        return self._target


def _agent(tmp_path: Path) -> NodeAgent:
    sim = open_simulation("reference", seed=0)
    agent = NodeAgent(sim.backend, "gpu-node-7", StateFile(tmp_path / "state.json"))
    agent.set_policy(PolicyRef("p1", EnergyPolicySpec.model_validate({}), 1))
    return agent


async def test_the_exporter_pods_own_name_is_accepted_but_foreign_gpus_are_an_error(
    tmp_path: Path,
) -> None:
    agent = _agent(tmp_path)
    with http_server(lambda path: TITANV) as port:
        async with httpx.AsyncClient() as client:
            source = _Found(f"http://127.0.0.1:{port}/metrics", "dcgm-exporter-lcxpl")
            scrapers = Scrapers(agent, client, dcgm=source)
            try:
                await scrapers.scrape_once()
                await scrapers.dcgm_done()
            finally:
                scrapers.close()
    # Accepted as this node's host label (no scrape-foreign), but the TITAN Vs' UUIDs are not
    # the simulated node's GPUs: rejected with a reason naming both.
    assert agent.errors["scrape-foreign"] == 0
    assert agent.errors["scrape"] == 1 and agent.inputs.dcgm is None


async def test_a_slow_exporter_never_holds_the_scrape_round(tmp_path: Path) -> None:
    agent = _agent(tmp_path)

    def slow(path: str) -> str:
        time.sleep(1.0)  # MIG-heavy exporters take seconds (dcgm-exporter #607, #625)
        return TITANV

    with http_server(slow) as port:
        async with httpx.AsyncClient() as client:
            source = _Found(f"http://127.0.0.1:{port}/metrics", "dcgm-exporter-lcxpl")
            scrapers = Scrapers(agent, client, dcgm=source, limits=ScrapeLimits())
            try:
                started = time.perf_counter()
                await scrapers.scrape_once()
                assert time.perf_counter() - started < 0.5  # the round did not wait for it
                await scrapers.scrape_once()  # the first is still in flight: not doubled
                await asyncio.wait_for(scrapers.dcgm_done(), 5.0)
            finally:
                scrapers.close()
    assert agent.errors["scrape"] == 1  # its one answer arrived (foreign GPUs, as above)


def test_discovery_lists_only_the_exporter_namespace() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def pod(ns: str, name: str, ip: str) -> SimpleNamespace:
        return SimpleNamespace(
            metadata=SimpleNamespace(namespace=ns, name=name),
            spec=SimpleNamespace(node_name="n1"),
            status=SimpleNamespace(phase="Running", pod_ip=ip),
        )

    class Core:
        def __init__(self, api: object) -> None:
            pass

        def list_namespaced_pod(self, ns: str, **kw: Any) -> SimpleNamespace:
            calls.append((ns, kw))
            # A server that ignored the namespace returns a tenant's look-alike first.
            return SimpleNamespace(
                items=[pod("tenant", "fake-exporter", "10.0.0.66"),
                       pod("gpu-operator", "nvidia-dcgm-exporter-x", "10.0.0.5")]
            )  # fmt: skip

    import kubernetes.client

    original = kubernetes.client.CoreV1Api
    kubernetes.client.CoreV1Api = Core  # type: ignore[misc,assignment]
    try:
        source = DcgmSource(
            discover_selector="app=nvidia-dcgm-exporter", api_client=object(), node_name="n1"
        )
        target = source._lookup()
    finally:
        kubernetes.client.CoreV1Api = original  # type: ignore[misc]
    assert calls and calls[0][0] == "gpu-operator"
    assert target == DcgmTarget(
        "http://10.0.0.5:9400/metrics", node_local=True, pod_name="nvidia-dcgm-exporter-x"
    )
