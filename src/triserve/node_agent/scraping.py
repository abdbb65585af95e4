"""Bounded, supervised scrapes that feed the agent: serving `/metrics`, dcgm-exporter, podres.

`Scrapers.run()` is an asyncio task beside the control tick. Every `interval_s` it scrapes
concurrently the serving pods the node's policy selects (`NodeAgent.scrape_targets`) and
this node's dcgm-exporter (`triserve.node_agent.dcgmsource`), and asks the kubelet's
pod-resources API every `podres_interval_s`. The dcgm scrape runs as its own task with its
own, longer deadline (`ScrapeLimits.dcgm_deadline_s`): a slow exporter is never waited for
by a round, and while it is slow its last snapshot simply ages. A dcgm scrape whose GPUs
include none of this node's is rejected and counted (`scrape`) with the GPUs it named.
Results land in the `NodeAgent` through its setters; the tick only ever reads the latest,
each stamped with the time it was taken.

Each serving target runs on its own schedule, so no tenant can starve the others: a round
starts a target only when its previous scrape has finished and it has waited
`ScrapeLimits.cost_spacing` times as long as that scrape took (a pod that trickles to the
deadline, or sends a body that takes long to read and parse, is scraped less often, so its
cost stays a bounded share of the agent's time), and `run()` waits for a round's targets at
most `ScrapeLimits.round_wait_s` (a slower one carries on and lands when it lands, while the
next round goes ahead for everyone else).

Every target is untrusted and bounded (`ScrapeLimits`): one total deadline for the whole
request and body (a pod trickling bytes is cut off), a body-size cap enforced while
streaming (a huge body is abandoned, never buffered), no compression (no zip bombs), and
the parse runs off the event loop (`OffLoopParser`): a small body in a worker thread, a
large one in a worker process, so the control tick never waits on it — a thread parsing a
megabyte would still hold the interpreter lock for most of the loop's time slices — and a
parse that takes longer than `ScrapeLimits.parse_deadline_s` fails that scrape. A
failed or rejected scrape is counted (`triserve_agent_errors_total{kind}`: `scrape`,
`scrape-foreign` for another node's DCGM data) and skipped; the previous snapshot stays
and ages. A round that fails as a whole is counted (`scrape-task`) and the next one runs:
`supervise` restarts the task itself if it ever ends.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from functools import partial
from typing import TypeVar

import httpx

from triserve.node_agent.agent import NodeAgent
from triserve.node_agent.dcgm import ForeignScrapeError, parse_dcgm
from triserve.node_agent.dcgmsource import DcgmSource, DcgmTarget
from triserve.node_agent.podresources import PodResourcesClient, PodResourcesError
from triserve.node_agent.promtext import ScrapeError
from triserve.node_agent.serving import parse_serving_scrape

log = logging.getLogger(__name__)

#: Returns the current time on the backend's clock (monotonic seconds, or simulated time).
Clock = Callable[[], float]
T = TypeVar("T")

#: Bodies longer than this (characters) are parsed in the worker process, not a thread.
PROCESS_PARSE_ABOVE = 64 * 1024
#: Seconds a parse may take before its scrape fails (`ScrapeLimits.parse_deadline_s`).
PARSE_DEADLINE_S = 2.0


@dataclass(frozen=True, slots=True)
class ScrapeLimits:
    """Bounds on one scrape of one target."""

    deadline_s: float = 0.4  # the whole request, headers to last byte
    max_body_bytes: int = 1024 * 1024  # dcgm-exporter on 8 GPUs is ~100 KB
    #: dcgm-exporter on MIG-heavy nodes takes seconds (NVIDIA/dcgm-exporter #607, #625); its
    #: scrape runs beside the rounds, so this longer deadline never delays them or the tick.
    dcgm_deadline_s: float = 5.0
    #: A parse still running after this fails its scrape (a queue of bulky bodies must not
    #: keep a target's data, or the round, waiting).
    parse_deadline_s: float = PARSE_DEADLINE_S
    #: How long `run()` waits for a round's scrapes; slower ones finish on their own.
    round_wait_s: float = 0.6
    #: A target waits this many times as long as its last scrape took before the next one.
    cost_spacing: float = 4.0


#: Connections the agent's scrape client may hold at once: at least one per target of a large
#: node, so that no target queues for a connection behind slow ones (httpx's default is 100).
MAX_CONNECTIONS = 1024


def http_client() -> httpx.AsyncClient:
    """The agent's scrape client: enough connections that targets never queue for one."""
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=256)
    )


async def fetch_bounded(client: httpx.AsyncClient, url: str, limits: ScrapeLimits) -> str:
    """The body of `url` as text, within `limits`; raises `ScrapeError` otherwise."""
    try:
        async with asyncio.timeout(limits.deadline_s):
            async with client.stream(
                "GET", url, timeout=limits.deadline_s, headers={"Accept-Encoding": "identity"}
            ) as response:
                response.raise_for_status()
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > limits.max_body_bytes:
                    raise ScrapeError(f"body of {declared} bytes over {limits.max_body_bytes}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_raw():
                    size += len(chunk)
                    if size > limits.max_body_bytes:
                        raise ScrapeError(f"body over {limits.max_body_bytes} bytes; abandoned")
                    chunks.append(chunk)
    except TimeoutError:
        raise ScrapeError(f"no complete answer within {limits.deadline_s:g} s") from None
    except httpx.HTTPError as exc:
        raise ScrapeError(f"{type(exc).__name__}: {exc}") from None
    return b"".join(chunks).decode("utf-8", errors="replace")


class OffLoopParser:
    """Runs parse functions away from the event loop.

    A body up to `process_above` characters (a healthy pod's scrape, or dcgm-exporter on a
    few GPUs) is parsed in a worker thread: a few milliseconds of interpreter lock. Larger
    bodies go to one long-lived worker process, started on first need, which has an
    interpreter of its own; the event loop only waits for the pickled result. A worker that
    dies (killed for memory, say) fails that parse as a `ScrapeError` and is replaced on the
    next large body.
    """

    def __init__(self, process_above: int = PROCESS_PARSE_ABOVE) -> None:
        self.process_above = process_above
        self._pool: ProcessPoolExecutor | None = None

    async def parse(
        self,
        size: int,
        fn: Callable[..., T],
        *args: object,
        deadline_s: float = PARSE_DEADLINE_S,
        **kwargs: object,
    ) -> T:
        """`fn(*args, **kwargs)` off the loop within `deadline_s`; `size` picks the worker."""
        try:
            async with asyncio.timeout(deadline_s):
                return await self._parse(size, fn, *args, **kwargs)
        except TimeoutError:
            raise ScrapeError(f"parse of {size} characters took over {deadline_s:g} s") from None

    async def _parse(self, size: int, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        if size <= self.process_above:
            return await asyncio.to_thread(fn, *args, **kwargs)
        if self._pool is None:
            # spawn, not fork: the agent runs threads, and a forked child would inherit their locks.
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, partial(fn, *args, **kwargs)
            )
        except BrokenProcessPool:
            self.close()
            raise ScrapeError(f"the parse worker died on a {size}-character body") from None

    def close(self) -> None:
        """Stop the worker process, if one was started."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


@dataclass(slots=True)
class _Target:
    """One serving target's schedule: its scrape in flight, and when the next may start."""

    task: asyncio.Task[None] | None = None
    next_s: float = 0.0


class Scrapers:
    """Runs the serving, dcgm and pod-resources scrapes for one agent (`close` when done)."""

    def __init__(
        self,
        agent: NodeAgent,
        client: httpx.AsyncClient,
        *,
        clock: Clock = time.monotonic,
        interval_s: float = 0.5,
        limits: ScrapeLimits | None = None,
        dcgm: DcgmSource | None = None,
        dcgm_hostnames: frozenset[str] = frozenset(),
        pod_resources: PodResourcesClient | None = None,
        podres_interval_s: float = 2.0,
        scrape_serving: bool = True,
    ) -> None:
        """`scrape_serving` False leaves serving scrapes to someone else (the simulated node)."""
        self.agent = agent
        self.client = client
        self.clock = clock
        self.interval_s = interval_s
        self.limits = limits if limits is not None else ScrapeLimits()
        self.dcgm = dcgm
        self.dcgm_hostnames = dcgm_hostnames
        self.pod_resources = pod_resources
        self.podres_interval_s = podres_interval_s
        self.scrape_serving = scrape_serving
        self._podres_next_s = 0.0
        self.rounds = 0
        self.parser = OffLoopParser()
        self._dcgm_task: asyncio.Task[None] | None = None
        self._targets: dict[tuple[str, str], _Target] = {}

    def close(self) -> None:
        """Release the parse worker process and stop every scrape still in flight."""
        if self._dcgm_task is not None and not self._dcgm_task.done():
            self._dcgm_task.cancel()
        for target in self._targets.values():
            if target.task is not None and not target.task.done():
                target.task.cancel()
        self.parser.close()

    async def dcgm_done(self) -> None:
        """Wait for the dcgm scrape in flight, if any (it runs beside the rounds, unawaited)."""
        if self._dcgm_task is not None:
            await asyncio.gather(self._dcgm_task, return_exceptions=True)

    async def run(self) -> None:
        """Scrape forever (cancel the task to stop); a failed round is counted, not fatal."""
        while True:
            started = time.monotonic()
            try:
                await self.scrape_once(wait_s=self.limits.round_wait_s)
            except Exception as exc:
                self.agent.error("scrape-task", f"scrape round failed: {type(exc).__name__}: {exc}")
            await asyncio.sleep(max(self.interval_s - (time.monotonic() - started), 0.01))

    async def scrape_once(self, wait_s: float | None = None) -> None:
        """One round of every scrape that is due, concurrently.

        Waits for the round's serving scrapes at most `wait_s` (None: until all finished).
        """
        jobs: list[Awaitable[None]] = []
        if self.agent.policy is None:
            return  # a node without a policy idles: nothing to control, nothing to read
        started = self._start_serving() if self.scrape_serving else []
        if (
            self.dcgm is not None
            and self.dcgm.enabled
            and (self._dcgm_task is None or self._dcgm_task.done())
        ):
            # Not awaited by the round: a slow exporter delays only its own data, which ages.
            self._dcgm_task = asyncio.create_task(self._guarded(self._dcgm(self.dcgm)))
        if self.pod_resources is not None and time.monotonic() >= self._podres_next_s:
            self._podres_next_s = time.monotonic() + self.podres_interval_s
            jobs.append(self._podres(self.pod_resources))
        await asyncio.gather(*(self._guarded(job) for job in jobs))
        if started:
            await asyncio.wait(started, timeout=wait_s)
        self.rounds += 1

    def _start_serving(self) -> list[asyncio.Task[None]]:
        """Start the scrape of every serving target that is due and not still in flight."""
        listed = dict(self.agent.scrape_targets())
        for key in [k for k in self._targets if k not in listed]:
            gone = self._targets.pop(key)  # the pod left, or the policy no longer selects it
            if gone.task is not None:
                gone.task.cancel()
        started = []
        now_s = time.monotonic()
        for key, url in listed.items():
            target = self._targets.setdefault(key, _Target())
            if target.task is not None and not target.task.done():
                continue  # still in flight: this target waits for itself, nobody else does
            if now_s < target.next_s:
                continue  # its last scrape was costly: it waits in proportion
            target.task = asyncio.create_task(self._guarded(self._timed(target, key, url)))
            started.append(target.task)
        return started

    async def _timed(self, target: _Target, key: tuple[str, str], url: str) -> None:
        started_s = time.monotonic()
        try:
            await self._serving(key, url)
        finally:
            took_s = time.monotonic() - started_s
            target.next_s = started_s + self.limits.cost_spacing * took_s

    async def _guarded(self, job: Awaitable[None]) -> None:
        # One target's unexpected failure must not cancel the other targets of the round.
        try:
            await job
        except Exception as exc:
            self.agent.error("scrape", f"{type(exc).__name__}: {exc}")

    async def _serving(self, key: tuple[str, str], url: str) -> None:
        where = f"pod {key[0]}/{key[1]} at {url}"
        deadline_s = self.limits.parse_deadline_s
        try:
            text = await fetch_bounded(self.client, url, self.limits)
            scrape = await self.parser.parse(
                len(text), parse_serving_scrape, text, self.clock(), deadline_s=deadline_s
            )
        except ScrapeError as exc:
            self.agent.error("scrape", f"{where}: {exc}")
            return
        self.agent.set_serving(key, scrape.total, scrape.engines)

    async def _dcgm(self, source: DcgmSource) -> None:
        target: DcgmTarget | None = await source.target()
        if target is None:
            return
        limits = replace(self.limits, deadline_s=max(self.limits.dcgm_deadline_s, 0.01))
        hostnames = self.dcgm_hostnames | ({target.pod_name} if target.pod_name else set())
        try:
            text = await fetch_bounded(self.client, target.url, limits)
            snapshot = await self.parser.parse(
                len(text),
                parse_dcgm,
                text,
                self.clock(),
                self.agent.node_name,
                accept_unlabelled=target.node_local,
                hostnames=frozenset(hostnames),
                deadline_s=max(limits.deadline_s, self.limits.parse_deadline_s),
            )
        except ForeignScrapeError as exc:
            self.agent.error("scrape-foreign", f"dcgm-exporter at {target.url}: {exc}")
            return
        except ScrapeError as exc:
            self.agent.error("scrape", f"dcgm-exporter at {target.url}: {exc}")
            return
        ours = {g.identity.uuid for g in self.agent.gpus.values() if g.identity.uuid}
        if (
            snapshot.gpus
            and ours
            and not any(
                snapshot.for_gpu(i, g.identity.uuid) is not None for i, g in self.agent.gpus.items()
            )
        ):
            theirs = ", ".join(sorted(snapshot.gpus)[:3])
            self.agent.error(
                "scrape",
                f"dcgm-exporter at {target.url}: none of its GPUs ({theirs}) is one of this "
                f"node's ({', '.join(sorted(ours)[:3])}); is the URL another node's exporter?",
            )
            return
        self.agent.set_dcgm(snapshot)

    async def _podres(self, client: PodResourcesClient) -> None:
        try:
            entries = await client.list_gpus()
        except PodResourcesError as exc:
            self.agent.error("podresources", str(exc))
            return
        self.agent.set_pod_resources(entries)


async def supervise(
    name: str,
    factory: Callable[[], Awaitable[None]],
    on_crash: Callable[[str, str], None],
    backoff_s: float = 1.0,
) -> None:
    """Run `factory()` forever, restarting it after `backoff_s` whenever it ends or raises.

    `on_crash(kind, message)` counts each restart (the agent's error counter).
    """
    while True:
        try:
            await factory()
            message = f"task {name} ended; restarting"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            message = f"task {name} crashed ({type(exc).__name__}: {exc}); restarting"
        on_crash("task", message)
        await asyncio.sleep(backoff_s)
