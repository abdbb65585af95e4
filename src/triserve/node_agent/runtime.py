"""Assemble and run one agent process: backend, sources, scrapers, tick, exporter, reports.

`run(options)` is the body of `triserve agent` (see `triserve.node_agent.main` for the
flags) and of `triserve demo`. It takes the state file's node-wide lock (a second agent
refuses to start),
restores stale locks at start-up, serves `/metrics`,
starts the watchdog, follows the policy (cluster watches or a file), runs the control tick
(wall clock, or inside the simulation with `--sim`), scrapes asynchronously, reports every
report interval, and on SIGTERM/SIGINT or the end of `--duration` restores every GPU.
With `--hints-socket PATH` it also serves the stage-hint endpoint
(`triserve.node_agent.hintserver`) on the same event loop as the tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from triserve.api.models import LabelSelector
from triserve.api.status import NodeEnergyReportStatus
from triserve.control import ProbeSettings
from triserve.gpu.backend import GpuBackend
from triserve.node_agent.agent import NodeAgent, PolicyRef
from triserve.node_agent.dcgmsource import DcgmSource
from triserve.node_agent.errors import ErrorKind
from triserve.node_agent.exporter import MetricsServer, build_registry, liveness
from triserve.node_agent.hintserver import HintServer
from triserve.node_agent.kube import WATCH_TIMEOUT_S
from triserve.node_agent.podresources import PodResourcesClient
from triserve.node_agent.reports import Reporter, ReportWriter, log_status
from triserve.node_agent.safety import GuardRails, StateFile, Watchdog
from triserve.node_agent.scraping import Scrapers, http_client, supervise

log = logging.getLogger(__name__)


class NodeDriver(Protocol):
    """A node whose time and pods come from elsewhere: the simulated node of `--sim`.

    The agent package never imports the simulator; `triserve.simnode` implements this and
    the CLI loads it only for `--sim`.
    """

    def now_s(self) -> float:
        """The node's clock (simulated seconds)."""
        ...

    def publish_pods(self, selector: LabelSelector | None = None) -> None:
        """Hand the node's serving pods to the agent (standalone runs)."""
        ...

    async def drive(
        self,
        *,
        speed: float,
        tick_s: float,
        duration_s: float | None,
        stop: asyncio.Event,
        after_step: Callable[[float], None] | None = None,
    ) -> None:
        """Advance the node's time and run the agent's tick inside it until done or `stop`."""
        ...


#: Builds the driver of a simulated node for an agent: (agent, publish pods?) -> driver.
NodeDriverFactory = Callable[[NodeAgent, bool, float], NodeDriver]


@dataclass(slots=True)
class AgentOptions:
    """Everything `run` needs; the CLI fills it from flags, tests build it directly."""

    node_name: str
    state_file: Path
    metrics_port: int = 9402
    metrics_host: str = "0.0.0.0"
    health_port: int | None = None  # /healthz, /readyz on their own listener too (None: no)
    policy: PolicyRef | None = None  # standalone: the policy from the file
    standalone: bool = False
    backend: GpuBackend | None = None
    node_driver: NodeDriverFactory | None = None  # --sim: the simulated node
    speed: float = 1.0
    duration_s: float | None = None
    dcgm_url: str | None = None
    dcgm_discover: str | None = None  # label selector of the dcgm-exporter pod on this node
    dcgm_namespace: str = "gpu-operator"  # the only namespace discovery searches
    dcgm_port: int = 9400
    dcgm_host_ip: str | None = None
    dcgm_host_port: int | None = None
    dcgm_hostnames: frozenset[str] = frozenset()
    dcgm_period_s: float = 30.0  # dcgm-exporter's collection interval (what its values average)
    pod_resources_socket: str | None = None
    api_client: Any = None
    scrape_interval_s: float = 0.5
    report_interval_s: float | None = None  # None: the policy's reportIntervalSeconds
    watchdog_timeout_s: float = 5.0
    rails: GuardRails = field(default_factory=GuardRails)  # cluster floors on clocks/power
    shutdown_retry_s: float = 10.0  # how long shutdown retries restores that do not verify
    watch_timeout_s: float = WATCH_TIMEOUT_S  # server-side length of one API watch
    probe: ProbeSettings = field(default_factory=ProbeSettings)  # baseline probes
    metrics_port_fallback: bool = False  # demo: take any free port if the one asked is busy
    hints_socket: Path | None = None  # stage-hint endpoint (None: hints off, scrapes only)
    proc_root: Path = Path("/proc")  # where hint senders' cgroups are read (host PIDs)
    on_step: Callable[[NodeAgent, float], None] | None = None
    #: Called with every report built (the demo keeps its estimate); None: nothing extra.
    on_report: Callable[[NodeEnergyReportStatus], None] | None = None


class AgentRuntime:
    """One running agent; `run()` returns when stopped and every GPU is restored."""

    def __init__(self, options: AgentOptions) -> None:
        """Builds the agent over `options.backend` (NVML, or a simulated node's)."""
        self.options = options
        backend = options.backend
        if backend is None:
            raise ValueError("no GPU backend: pass --sim SCENARIO or run on a GPU node with NVML")
        self.agent = NodeAgent(
            backend,
            options.node_name,
            StateFile(options.state_file),
            probe=options.probe,
            rails=options.rails,
            shutdown_retry_s=options.shutdown_retry_s,
            dcgm_period_s=options.dcgm_period_s,
            on_policy_change=lambda _policy: self._report_soon(),
        )
        self.stop_event = asyncio.Event()
        self.server: MetricsServer | None = None
        self.watchdog: Watchdog | None = None
        self.sim_node: NodeDriver | None = None
        self.writer: ReportWriter | None = None
        self.reporter = Reporter(self.agent)
        #: The last report built (standalone runs and the demo read it).
        self.last_report: NodeEnergyReportStatus | None = None
        self._next_report_s: float | None = None
        self._group: asyncio.TaskGroup | None = None
        self._unrestored: list[int] = []
        self._report_pending = False
        self._finishing = False

    def stop(self) -> None:
        """Ask the run to end (signal handlers call this)."""
        self.stop_event.set()

    def _interval_s(self) -> float:
        policy = self.agent.policy
        return policy.spec.control_interval_ms / 1000.0 if policy else 0.05

    def _report_interval_s(self) -> float:
        if self.options.report_interval_s is not None:
            return self.options.report_interval_s
        policy = self.agent.policy
        return float(policy.spec.report_interval_s) if policy else 30.0

    async def run(self) -> int:
        """Run until stopped; 0 on a clean stop, 1 when a GPU could not be restored.

        Raises `StateFileBusyError` when another agent holds this node's state file.
        """
        state_file = self.agent.state_file
        state_file.acquire()
        try:
            return await self._run_locked()
        finally:
            state_file.release()

    async def _run_locked(self) -> int:
        opts, agent = self.options, self.agent
        agent.startup()
        # Torn down in reverse: tasks, hint server, scrapers, HTTP client, cluster source,
        # then every GPU restored and the final report, then the watchdog and /metrics.
        async with contextlib.AsyncExitStack() as stack:
            self.server = self._serve_metrics()
            self.server.start()
            stack.callback(self.server.stop)
            self.watchdog = Watchdog(opts.watchdog_timeout_s, agent.on_watchdog)
            self.watchdog.start()
            stack.callback(self.watchdog.stop)
            stack.push_async_callback(self._finish)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self.stop)
            self._follow_policy(stack, loop)
            client = await stack.enter_async_context(http_client())
            podres = (
                PodResourcesClient(opts.pod_resources_socket) if opts.pod_resources_socket else None
            )
            if podres is not None:
                stack.push_async_callback(podres.close)
            scrapers = Scrapers(
                agent,
                client,
                clock=self._clock,
                interval_s=opts.scrape_interval_s,
                dcgm=self._dcgm_source(),
                dcgm_hostnames=opts.dcgm_hostnames,
                pod_resources=podres,
                scrape_serving=not (opts.node_driver is not None and opts.standalone),
            )
            stack.callback(scrapers.close)
            hints = self._hint_server()
            if hints is not None:
                await hints.start()
                stack.push_async_callback(hints.close)
            await self._drive_with_tasks(scrapers)
        return 1 if self._unrestored else 0

    def _follow_policy(self, stack: contextlib.AsyncExitStack, loop: Any) -> None:
        """The policy from the file (standalone) or the cluster; the simulated node, if any."""
        opts, agent = self.options, self.agent
        if opts.standalone:
            agent.set_policy(opts.policy)
        else:
            from triserve.node_agent.kube import ClusterSource

            source = ClusterSource(
                opts.api_client, agent, loop, watch_timeout_s=opts.watch_timeout_s
            )
            source.start()
            stack.callback(source.stop)
            self.writer = ReportWriter(opts.api_client, opts.node_name)
        if opts.node_driver is not None:
            self.sim_node = opts.node_driver(agent, opts.standalone, opts.scrape_interval_s)
            if opts.standalone:
                selector = opts.policy.spec.pod_selector if opts.policy else None
                self.sim_node.publish_pods(selector)

    async def _drive_with_tasks(self, scrapers: Scrapers) -> None:
        """Run the tick with the scrapers and reports as tasks of one group, until stopped.

        A failure of the tick itself is raised as it is, not wrapped in an exception group.
        """
        failure: Exception | None = None
        async with asyncio.TaskGroup() as group:
            self._group = group
            if self._report_pending:
                self._report_pending = False
                group.create_task(self._report(), name="report")
            scraping = group.create_task(
                supervise("scrapers", scrapers.run, self.agent.error), name="scrapers"
            )
            try:
                await self._drive()
            except Exception as exc:
                failure = exc
            finally:
                scraping.cancel()
                self._finishing = True
                self._group = None  # reports still running finish; no new ones start here
        if failure is not None:
            raise failure

    async def _finish(self) -> None:
        """Restore every GPU, then send the final report."""
        self._unrestored = self.agent.shutdown("agent stopping")
        await self._report(final=True)

    def _hint_server(self) -> HintServer | None:
        path = self.options.hints_socket
        if path is None:
            return None
        agent = self.agent

        def deliver(uid: str, data: bytes) -> bool:
            return agent.receive_hint(uid, data, self._clock())

        log.info("stage hints: listening on %s", path)

        return HintServer(
            path,
            deliver,
            agent.knows_pod,
            proc_root=self.options.proc_root,
            on_refused=agent.hint_refused,
        )

    def _dcgm_source(self) -> DcgmSource:
        opts = self.options
        return DcgmSource(
            url=opts.dcgm_url,
            host_ip=opts.dcgm_host_ip,
            host_port=opts.dcgm_host_port,
            discover_selector=opts.dcgm_discover,
            namespace=opts.dcgm_namespace,
            port=opts.dcgm_port,
            api_client=opts.api_client,
            node_name=opts.node_name,
        )

    def _serve_metrics(self) -> MetricsServer:
        opts, agent = self.options, self.agent
        registry = build_registry(agent)
        healthy = liveness(agent, max(opts.watchdog_timeout_s * 2, 10.0))
        health_port = opts.health_port
        try:
            return MetricsServer(
                registry,
                opts.metrics_port,
                opts.metrics_host,
                healthy,
                agent.is_ready,
                health_port=health_port,
            )
        except OSError:
            if not opts.metrics_port_fallback:
                raise
            any_port = None if health_port is None else 0
            return MetricsServer(
                registry, 0, opts.metrics_host, healthy, agent.is_ready, health_port=any_port
            )

    def _clock(self) -> float:
        node = self.sim_node
        return node.now_s() if node is not None else time.monotonic()

    async def _drive(self) -> None:
        opts = self.options
        if self.sim_node is not None:
            await self.sim_node.drive(
                speed=opts.speed,
                tick_s=self._interval_s(),
                duration_s=opts.duration_s,
                stop=self.stop_event,
                after_step=self._after_step,
            )
            return
        end = time.monotonic() + opts.duration_s if opts.duration_s is not None else None
        while not self.stop_event.is_set() and (end is None or time.monotonic() < end):
            started = time.monotonic()
            self.agent.tick(started)
            self._after_step(started)
            remaining = self._interval_s() - (time.monotonic() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), timeout=max(remaining, 0.001))

    def _after_step(self, now_s: float) -> None:
        assert self.watchdog is not None
        self.watchdog.beat()
        if self.options.on_step is not None:
            self.options.on_step(self.agent, now_s)
        if self._next_report_s is None:
            self._next_report_s = now_s + self._report_interval_s()
        elif now_s >= self._next_report_s:
            self._next_report_s = now_s + self._report_interval_s()
            self._report_soon()

    def _report_soon(self) -> None:
        """Report now, as a task of the running group (before it starts: once it does)."""
        if self._group is not None:
            self._group.create_task(self._report(), name="report")
        elif not self._finishing:
            self._report_pending = True

    async def _report(self, final: bool = False) -> None:
        try:
            status = self.reporter.build(dt.datetime.now(dt.UTC))
        except Exception as exc:  # a broken report must never stop the control tick
            log.exception("building the NodeEnergyReport failed")
            self.agent.error(ErrorKind.REPORT, f"building the report failed: {exc}")
            return
        self.last_report = status
        if self.options.on_report is not None:
            self.options.on_report(status)
        if self.writer is None:
            if not final:
                log_status(status)
            return
        try:
            await asyncio.to_thread(self.writer.write, status)
        except Exception as exc:
            self.agent.error(ErrorKind.REPORT, f"NodeEnergyReport {self.options.node_name}: {exc}")
