"""The agent's Prometheus exporter: `/metrics`, `/healthz` and `/readyz` on `:9402`.

`AgentCollector` builds every metric family in `collect()` from the agent's live state at
scrape time (no global gauges); `build_registry` puts it in a fresh registry next to the
agent's own tick-time `Histogram` (`accounting.TickMeter.seconds`, observed once per tick).
Every `ErrorKind` is published from the start, at 0 until it happens.
Metric names and labels are the contract in docs/architecture.md — dashboards and alerts are
built on exactly these. Per-GPU series carry `node`, `gpu`, `UUID`, `pod`, `namespace`,
`container`, `stage`, `policy` (empty where unknown) so they join with dcgm-exporter's; a GPU
shared by several stage pods gets one series per pod. `MetricsServer` serves them from a
daemon thread (stdlib `http.server`), so scrapes never block the control tick. The server is
bounded: each connection gets `REQUEST_TIMEOUT_S` to send its request and read the answer,
at most `MAX_CONNECTIONS` are served at once (more are closed straight away), and it binds
the address it is given — the pod IP from the downward API in the chart, not 0.0.0.0.
"""

from __future__ import annotations

import logging
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
#: Seconds a client may take to send its request or read the answer.
REQUEST_TIMEOUT_S = 5.0
#: Connections served at once; more are closed at once (each costs a thread).
MAX_CONNECTIONS = 16


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
            "trips": CounterMetricFamily(
                "triserve_slo_guard_trips", "Times the SLO guard engaged", labels=GPU_LABELS
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
                "trips": gpu.totals.slo_guard_trips,
                "pipeline": gpu.totals.pipeline_capped_s,
            }
            running = {o.pod: (o.serving.running if o.serving else 0) for o in gpu.stages}
            for labels in _gpu_label_sets(agent, gpu):
                for key, family in g.items():
                    family.add_metric(labels, float(values[key]))
                for reason, count in sorted(gpu.totals.decisions.items()):
                    decisions.add_metric([*labels, reason], float(count))
                if labels[3]:
                    active.add_metric(labels, 1.0 if running.get(labels[3], 0) > 0 else 0.0)
        yield from g.values()
        yield decisions
        yield active
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
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        """`healthy`/`ready` are evaluated per request (on the server thread)."""
        self.registry = registry
        self.healthy = healthy
        self.ready = ready
        self.timeout_s = timeout_s
        self._server = _BoundedServer((host, port), self._handler(), max_connections)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="triserve-metrics", daemon=True
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            # Socket timeout for reading the request and writing the answer.
            timeout = server.timeout_s

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body = generate_latest(server.registry)
                    self._send(200, body, CONTENT_TYPE_LATEST)
                elif path in {"/healthz", "/readyz"}:
                    check = server.healthy if path == "/healthz" else server.ready
                    ok = check()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"not ready\n")
                else:
                    self._send(404, b"not found: try /metrics, /healthz or /readyz\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("metrics: " + format, *args)

        return Handler

    def start(self) -> None:
        """Start serving."""
        self._thread.start()
        log.info("serving /metrics, /healthz, /readyz on port %d", self.port)

    @property
    def rejected_connections(self) -> int:
        """Connections closed unserved because `max_connections` were busy."""
        return self._server.rejected

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


def liveness(agent: NodeAgent, max_silence_s: float) -> Callable[[], bool]:
    """Healthy while the tick ran within `max_silence_s` of wall time."""
    state = {"last": time.monotonic(), "ticks": -1}

    def check() -> bool:
        ticks = agent.ticks.ticks_run
        if ticks != state["ticks"]:
            state["ticks"], state["last"] = ticks, time.monotonic()
        return time.monotonic() - state["last"] <= max_silence_s

    return check
