"""Asynchronous scrapes that feed the agent: serving `/metrics`, dcgm-exporter, pod-resources.

`Scrapers.run()` is an asyncio task beside the control tick. Every `interval_s` it scrapes
all serving pods and dcgm-exporter concurrently with httpx (each with its own timeout, so a
slow pod delays nobody), and asks the kubelet's pod-resources API every `podres_interval_s`.
Results land in the `NodeAgent` through its setters; the tick only ever reads the latest.
A failed or malformed scrape is counted (`kind="scrape"`) and skipped; the previous
snapshot stays until the next good one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import httpx

from triserve.node_agent.agent import NodeAgent
from triserve.node_agent.dcgm import parse_dcgm
from triserve.node_agent.podresources import PodResourcesClient, PodResourcesError
from triserve.node_agent.serving import parse_serving

log = logging.getLogger(__name__)

#: Returns the current time on the backend's clock (monotonic seconds, or simulated time).
Clock = Callable[[], float]


class Scrapers:
    """Runs the serving, dcgm and pod-resources scrapes for one agent."""

    def __init__(
        self,
        agent: NodeAgent,
        client: httpx.AsyncClient,
        *,
        clock: Clock = time.monotonic,
        interval_s: float = 0.5,
        timeout_s: float = 0.4,
        dcgm_url: str | None = None,
        pod_resources: PodResourcesClient | None = None,
        podres_interval_s: float = 2.0,
        scrape_serving: bool = True,
    ) -> None:
        """`scrape_serving` False leaves serving scrapes to someone else (the simulated node)."""
        self.agent = agent
        self.client = client
        self.clock = clock
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.dcgm_url = dcgm_url
        self.pod_resources = pod_resources
        self.podres_interval_s = podres_interval_s
        self.scrape_serving = scrape_serving
        self._podres_next_s = 0.0
        self.rounds = 0

    async def run(self) -> None:
        """Scrape forever (cancel the task to stop)."""
        while True:
            started = time.monotonic()
            await self.scrape_once()
            await asyncio.sleep(max(self.interval_s - (time.monotonic() - started), 0.01))

    async def scrape_once(self) -> None:
        """One round of every scrape that is due, concurrently."""
        jobs: list[Awaitable[None]] = []
        if self.agent.policy is None:
            return  # a node without a policy idles: nothing to control, nothing to read
        if self.scrape_serving:
            with self.agent.lock:
                targets = [(p.key, p.metrics_url()) for p in self.agent.pods.values()]
            jobs += [self._serving(key, url) for key, url in targets if url]
        if self.dcgm_url:
            jobs.append(self._dcgm(self.dcgm_url))
        if self.pod_resources is not None and time.monotonic() >= self._podres_next_s:
            self._podres_next_s = time.monotonic() + self.podres_interval_s
            jobs.append(self._podres(self.pod_resources))
        await asyncio.gather(*jobs)
        self.rounds += 1

    async def _get(self, url: str) -> str | None:
        try:
            response = await self.client.get(url, timeout=self.timeout_s)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            self.agent.error("scrape", f"{url}: {type(exc).__name__}: {exc}")
            return None
        return response.text

    async def _serving(self, key: tuple[str, str], url: str) -> None:
        text = await self._get(url)
        if text is None:
            return
        try:
            snapshot = parse_serving(text, self.clock())
        except ValueError as exc:
            self.agent.error("scrape", f"pod {key[0]}/{key[1]} at {url}: {exc}")
            return
        self.agent.set_serving(key, snapshot)

    async def _dcgm(self, url: str) -> None:
        text = await self._get(url)
        if text is None:
            return
        try:
            snapshot = parse_dcgm(text, self.clock(), self.agent.node_name)
        except ValueError as exc:
            self.agent.error("scrape", f"dcgm-exporter at {url}: unparsable metrics: {exc}")
            return
        self.agent.set_dcgm(snapshot)

    async def _podres(self, client: PodResourcesClient) -> None:
        try:
            entries = await client.list_gpus()
        except PodResourcesError as exc:
            self.agent.error("podresources", str(exc))
            return
        self.agent.set_pod_resources(entries)
