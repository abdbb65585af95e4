"""The agent's Prometheus exporter: `/metrics`, `/healthz` and `/readyz` on `:9402`.

`AgentCollector` builds every metric family in `collect()` from the agent's live state at
scrape time (no global gauges); `build_registry` puts it in a fresh registry next to the
agent's own tick-time `Histogram` (`accounting.TickMeter.seconds`, observed once per tick).
Every `ErrorKind` is published from the start, at 0 until it happens.
Metric names and labels are the contract in docs/architecture.md — dashboards and alerts are
built on exactly these. Per-GPU series carry `node`, `gpu`, `UUID`, `pod`, `namespace`,
`container`, `stage`, `policy` (empty where unknown) so they join with dcgm-exporter's; a GPU
shared by several stage pods gets one series per pod. `MetricsServer` serves them from a
daemon thread (stdlib `http.server`), so scrapes never block the control tick; the runtime
(`triserve.node_agent.runtime`) starts it. The server is bounded: a connection gets
`HEADER_TIMEOUT_S` in all to send its request line and headers and `REQUEST_TIMEOUT_S` in
all for the whole exchange, however steadily it trickles bytes (each read and write waits
only for what is left of those deadlines); at most `MAX_CONNECTIONS` are served at once (more
are closed straight away), and it binds the address it is given — the pod IP from the
downward API in the chart, not 0.0.0.0. With a `health_port`, `/healthz` and `/readyz` are
also served on a listener of their own, with its own slots (`HEALTH_MAX_CONNECTIONS`), so
the kubelet's probes are answered whatever clients of the metrics port do.
"""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from triserve.api.status import GpuState
from triserve.node_agent.agent import NodeAgent
from triserve.node_agent.gpus import GpuRuntime
from triserve.node_agent.hints import RESULTS as HINT_RESULTS

log = logging.getLogger(__name__)

GPU_LABELS = ("node", "gpu", "UUID", "pod", "namespace", "container", "stage", "policy")
#: Seconds a client may take, in all, to send its request line and headers.
HEADER_TIMEOUT_S = 2.0
#: Seconds a connection may last in all: request, answer, and the client reading it.
REQUEST_TIMEOUT_S = 5.0
#: Connections served at once; more are closed at once (each costs a thread).
MAX_CONNECTIONS = 16
#: Connections the health listener serves at once (the kubelet probes one at a time).
HEALTH_MAX_CONNECTIONS = 4


def _gpu_label_sets(agent: NodeAgent, gpu: GpuRuntime) -> list[list[str]]:
    policy = agent.policy.name if agent.policy else ""
    base = [agent.node_name, str(gpu.index), gpu.identity.uuid]
    if not gpu.placements:
        return [[*base, "", "", "", "", policy]]
    return [
        [*base, p.pod.name, p.pod.namespace, p.container, p.pod.stage, policy]
        for p in gpu.placements
    ]


class AgentCollector(Collector):
    """Builds triserve's node metrics from a `NodeAgent` at scrape time."""

    def __init__(self, agent: NodeAgent) -> None:
        """Collect from `agent` (read under its lock)."""
        self.agent = agent

    def describe(self) -> Iterable[Metric]:
        """No up-front description: families depend on live state."""
        return []

    def collect(self) -> Iterable[Metric]:
        """Every triserve metric family, from the agent's state now."""
        with self.agent.lock:
            return list(self._families())

    def _families(self) -> Iterable[Metric]:
        agent = self.agent
        g: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "applied": GaugeMetricFamily(
                "triserve_gpu_sm_clock_applied_mhz", "SM clock read from the GPU", labels=GPU_LABELS
            ),
            "target": GaugeMetricFamily(
                "triserve_gpu_sm_clock_target_mhz",
                "SM clock the controller chose (0 = PMU default)",
                labels=GPU_LABELS,
            ),
            "power": GaugeMetricFamily(
                "triserve_gpu_power_watts", "Board power", labels=GPU_LABELS
            ),
            "temp": GaugeMetricFamily(
                "triserve_gpu_temperature_celsius", "GPU temperature", labels=GPU_LABELS
            ),
            "energy": CounterMetricFamily(
                "triserve_gpu_energy_joules",
                "Energy since the agent started managing the GPU",
                labels=GPU_LABELS,
            ),
            "stall": CounterMetricFamily(
                "triserve_gpu_stall_seconds",
                "Time the GPU's stages were stalled on upstream",
                labels=GPU_LABELS,
            ),
            "throttle": CounterMetricFamily(
                "triserve_gpu_throttle_seconds",
                "Time with a thermal or power clock event active",
                labels=GPU_LABELS,
            ),
            "tpj": GaugeMetricFamily(
                "triserve_gpu_tokens_per_joule",
                "Tokens generated per joule over the report window",
                labels=GPU_LABELS,
            ),
            "base_tpj": GaugeMetricFamily(
                "triserve_gpu_baseline_tokens_per_joule",
                "Estimated tokens per joule under the PMU default",
                labels=GPU_LABELS,
            ),
            "locked": GaugeMetricFamily(
                "triserve_gpu_clocks_locked",
                "1 while triserve holds a clock lock on the GPU",
                labels=GPU_LABELS,
            ),
            "managed": GaugeMetricFamily(
                "triserve_gpu_managed", "1 managed, 0 released", labels=GPU_LABELS
            ),
            "degraded": GaugeMetricFamily(
                "triserve_gpu_degraded",
                "1 after repeated NVML errors (left at default clocks)",
                labels=GPU_LABELS,
            ),
            "restore_failed": GaugeMetricFamily(
                "triserve_gpu_restore_failed",
                "1 while restoring the GPU's default clocks and power limit has not verified "
                "(the agent keeps retrying; the GPU may still hold triserve's settings)",
                labels=GPU_LABELS,
            ),
            "guard": GaugeMetricFamily(
                "triserve_slo_guard_active",
                "1 while the SLO guard holds clocks back toward default",
                labels=GPU_LABELS,
            ),
            "unheld": GaugeMetricFamily(
                "triserve_slo_bound_unheld",
                "1 while control cannot hold the latency bound or SLO targets on the GPU "
                "(it runs at the PMU default)",
                labels=GPU_LABELS,
            ),
            "trips": CounterMetricFamily(
                "triserve_slo_guard_trips", "Times the SLO guard engaged", labels=GPU_LABELS
            ),
            "cap": GaugeMetricFamily(
                "triserve_gpu_power_cap_watts",
                "Power-budget cap the agent enforces on the GPU as a ceiling (0 = none)",
                labels=GPU_LABELS,
            ),
            "budget_capped": CounterMetricFamily(
                "triserve_gpu_budget_capped_seconds",
                "Seconds the power budget's cap, not the policy, held the GPU at its power limit",
                labels=GPU_LABELS,
            ),
            "pipeline": CounterMetricFamily(
                "triserve_gpu_pipeline_capped_seconds",
                "Seconds the pipeline component (P) capped the clock: the GPU fed a queued "
                "bottleneck",
                labels=GPU_LABELS,
            ),
        }
        decisions = CounterMetricFamily(
            "triserve_gpu_decisions",
            "Control decisions by reason",
            labels=(*GPU_LABELS, "reason"),
        )
        active = GaugeMetricFamily(
            "triserve_gpu_stage_active",
            "1 while a stage on the GPU has running requests",
            labels=GPU_LABELS,
        )
        slo_used = GaugeMetricFamily(
            "triserve_slo_target_headroom_used_ratio",
            "Measured latency quantile over its SLO target (mode Targets; 1 = at the target)",
            labels=(*GPU_LABELS, "scope", "metric"),
        )
        slo_over = GaugeMetricFamily(
            "triserve_slo_target_over_ratio",
            "Share of observations above their SLO target over the controller's window",
            labels=(*GPU_LABELS, "scope", "metric"),
        )
        slo_unmet = GaugeMetricFamily(
            "triserve_slo_targets_unmet",
            "1 while an SLO target is missed with the GPU at boost (clocks cannot help)",
            labels=GPU_LABELS,
        )
        for gpu in agent.gpus.values():
            sample = gpu.last_sample
            decision = gpu.last_decision
            values = {
                "applied": sample.sm_clock_mhz if sample else 0.0,
                "target": (decision.target_sm_clock_mhz or 0) if decision else 0,
                "power": sample.power_mw / 1000.0 if sample else 0.0,
                "temp": sample.temperature_c if sample else 0.0,
                "energy": gpu.totals.energy_j,
                "stall": gpu.totals.stall_s,
                "throttle": gpu.totals.throttle_s,
                "tpj": gpu.tokens_per_joule,
                "base_tpj": gpu.baseline_tokens_per_joule,
                "locked": 1.0 if gpu.locked else 0.0,
                "managed": 1.0 if gpu.state is GpuState.MANAGED else 0.0,
                "degraded": 1.0 if gpu.state is GpuState.DEGRADED else 0.0,
                "restore_failed": 1.0 if gpu.state is GpuState.RESTORE_FAILED else 0.0,
                "guard": 1.0 if gpu.slo_guard_active else 0.0,
                "unheld": 1.0 if gpu.bound_unheld else 0.0,
                "trips": gpu.totals.slo_guard_trips,
                "pipeline": gpu.totals.pipeline_capped_s,
                "cap": (gpu.loop.power_ceiling_mw or 0) / 1000.0 if gpu.loop else 0.0,
                "budget_capped": gpu.totals.budget_capped_s,
            }
            running = {o.pod: (o.serving.running if o.serving else 0) for o in gpu.stages}
            for labels in _gpu_label_sets(agent, gpu):
                for key, family in g.items():
                    family.add_metric(labels, float(values[key]))
                for reason, count in sorted(gpu.totals.decisions.items()):
                    decisions.add_metric([*labels, reason], float(count))
                if labels[3]:
                    active.add_metric(labels, 1.0 if running.get(labels[3], 0) > 0 else 0.0)
                if gpu.slo is not None:
                    slo_unmet.add_metric(labels, 1.0 if gpu.slo.unmet else 0.0)
                    for m in gpu.slo.measured:
                        slo_labels = [*labels, m.target.scope, m.target.metric]
                        slo_used.add_metric(slo_labels, m.headroom_used)
                        slo_over.add_metric(slo_labels, m.over_share)
        yield from g.values()
        yield decisions
        yield active
        yield slo_used
        yield slo_over
        yield slo_unmet
        yield from self._agent_families()

    def _agent_families(self) -> Iterable[Metric]:
        agent = self.agent
        info = GaugeMetricFamily(
            "triserve_policy_info",
            "The policy this node follows",
            labels=("node", "policy", "mode", "strategy"),
        )
        if agent.policy is not None:
            spec = agent.policy.spec
            info.add_metric(
                [agent.node_name, agent.policy.name, spec.mode.value, spec.strategy.value], 1.0
            )
        else:
            info.add_metric([agent.node_name, "", "", ""], 1.0)
        yield info
        budget = GaugeMetricFamily(
            "triserve_policy_power_budget_watts",
            "spec.powerBudget.watts of the policy this node follows (absent: no budget)",
            labels=("node", "policy"),
        )
        if agent.policy is not None and agent.policy.spec.power_budget is not None:
            budget.add_metric(
                [agent.node_name, agent.policy.name], float(agent.policy.spec.power_budget.watts)
            )
        yield budget
        errors = CounterMetricFamily(
            "triserve_agent_errors", "Errors by kind", labels=("node", "kind")
        )
        for kind, count in agent.errors.items():
            errors.add_metric([agent.node_name, kind.value], float(count))
        yield errors
        hints = CounterMetricFamily(
            "triserve_agent_hints",
            "Stage-hint messages and connections by result (docs/serving-pods.md)",
            labels=("node", "result"),
        )
        for result in HINT_RESULTS:
            hints.add_metric([agent.node_name, result], float(agent.hints.counts.get(result, 0)))
        yield hints
        hint_ticks = CounterMetricFamily(
            "triserve_agent_hint_ticks",
            "GPU control steps run on receipt of a stage hint, between regular ticks",
            labels=("node",),
        )
        hint_ticks.add_metric([agent.node_name], float(agent.ticks.hint_ticks))
        yield hint_ticks


def build_registry(agent: NodeAgent) -> CollectorRegistry:
    """A fresh registry holding the agent's collector and its tick-time histogram."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))
    registry.register(agent.ticks.seconds)
    return registry


class _BoundedServer(ThreadingHTTPServer):
    """A threading server that serves at most `max_connections` connections at once."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        max_connections: int,
    ) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)
        self.rejected = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.rejected += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _DeadlineReader(io.RawIOBase):
    """A socket's reads, each waiting only for what is left of one deadline (monotonic s)."""

    def __init__(self, sock: socket.socket, deadline_s: float) -> None:
        self._sock = sock
        self.deadline_s = deadline_s

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left_s = self.deadline_s - time.monotonic()
        if left_s <= 0:
            raise TimeoutError("the client took too long to send its request")
        self._sock.settimeout(left_s)
        return self._sock.recv_into(buffer)


class MetricsServer:
    """`/metrics`, `/healthz`, `/readyz` on a daemon thread, with bounded connections."""

    def __init__(
        self,
        registry: CollectorRegistry,
        port: int,
        host: str = "0.0.0.0",
        healthy: Callable[[], bool] = lambda: True,
        ready: Callable[[], bool] = lambda: True,
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
        header_timeout_s: float = HEADER_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
        health_port: int | None = None,
    ) -> None:
        """`healthy`/`ready` are evaluated per request (on the server thread).

        `timeout_s` bounds a whole connection and `header_timeout_s` its request line and
        headers; `health_port` (None: none) serves `/healthz` and `/readyz` on their own.
        """
        self.registry = registry
        self.healthy = healthy
        self.ready = ready
        self.timeout_s = timeout_s
        self.header_timeout_s = min(header_timeout_s, timeout_s)
        self._servers = [_BoundedServer((host, port), self._handler(False), max_connections)]
        self.host = str(self._servers[0].server_address[0])
        self.port = int(self._servers[0].server_address[1])
        self.health_port: int | None = None
        if health_port is not None:
            try:
                health = _BoundedServer(
                    (host, health_port), self._handler(True), HEALTH_MAX_CONNECTIONS
                )
            except OSError:
                self._servers[0].server_close()
                raise
            self._servers.append(health)
            self.health_port = int(health.server_address[1])
        self._threads = [
            threading.Thread(target=s.serve_forever, name=f"triserve-{name}", daemon=True)
            for s, name in zip(self._servers, ("metrics", "health"), strict=False)
        ]

    def _handler(self, health_only: bool) -> type[BaseHTTPRequestHandler]:
        server = self
        paths = "/healthz or /readyz" if health_only else "/metrics, /healthz or /readyz"

        class Handler(BaseHTTPRequestHandler):
            # Each read and write waits for at most what is left of the deadlines (`setup`).
            timeout = server.timeout_s

            def setup(self) -> None:
                super().setup()
                started_s = time.monotonic()
                self.deadline_s = started_s + server.timeout_s
                self.rfile = io.BufferedReader(
                    _DeadlineReader(self.connection, started_s + server.header_timeout_s)
                )

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics" and not health_only:
                    body = generate_latest(server.registry)
                    self._send(200, body, CONTENT_TYPE_LATEST)
                elif path in {"/healthz", "/readyz"}:
                    check = server.healthy if path == "/healthz" else server.ready
                    ok = check()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"not ready\n")
                else:
                    self._send(404, f"not found: try {paths}\n".encode())

            def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self._left()
                self.end_headers()
                self._left()
                self.wfile.write(body)

            def _left(self) -> None:
                """Let the next write wait only for what is left of the request's time."""
                left_s = self.deadline_s - time.monotonic()
                if left_s <= 0:
                    raise TimeoutError("the client took too long to read the answer")
                self.connection.settimeout(left_s)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("metrics: " + format, *args)

        return Handler

    def start(self) -> None:
        """Start serving."""
        for thread in self._threads:
            thread.start()
        if self.health_port is None:
            log.info("serving /metrics, /healthz, /readyz on port %d", self.port)
        else:
            log.info(
                "serving /metrics on port %d, /healthz and /readyz on port %d (and %d)",
                self.port,
                self.health_port,
                self.port,
            )

    @property
    def rejected_connections(self) -> int:
        """Connections to the metrics port closed unserved: `max_connections` were busy."""
        return self._servers[0].rejected

    def stop(self) -> None:
        """Stop serving."""
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()


def liveness(agent: NodeAgent, max_silence_s: float) -> Callable[[], bool]:
    """Healthy while the tick ran within `max_silence_s` of wall time."""
    state = {"last": time.monotonic(), "ticks": -1}

    def check() -> bool:
        ticks = agent.ticks.ticks_run
        if ticks != state["ticks"]:
            state["ticks"], state["last"] = ticks, time.monotonic()
        return time.monotonic() - state["last"] <= max_silence_s

    return check
