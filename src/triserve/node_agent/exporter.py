"""The agent's Prometheus exporter: `/metrics`, `/healthz` and `/readyz` on `:9402`.

`AgentCollector` builds every metric family in `collect()` from the agent's live state at
scrape time (no global gauges); it is registered on a registry passed in explicitly.
Metric names and labels are the contract in docs/architecture.md — dashboards and alerts are
built on exactly these. Per-GPU series carry `node`, `gpu`, `UUID`, `pod`, `namespace`,
`container`, `stage`, `policy` (empty where unknown) so they join with dcgm-exporter's; a GPU
shared by several stage pods gets one series per pod. `MetricsServer` serves them from a
daemon thread (stdlib `http.server`), so scrapes never block the control tick.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from triserve.api.status import GpuState
from triserve.node_agent.agent import TICK_BUCKETS_S, NodeAgent
from triserve.node_agent.gpus import GpuRuntime

log = logging.getLogger(__name__)

GPU_LABELS = ("node", "gpu", "UUID", "pod", "namespace", "container", "stage", "policy")
ERROR_KINDS = ("nvml", "scrape", "annotation", "report")


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
                "energy": gpu.energy_j,
                "stall": gpu.stall_s,
                "throttle": gpu.throttle_s,
                "tpj": gpu.tokens_per_joule,
                "base_tpj": gpu.baseline_tokens_per_joule,
                "locked": 1.0 if gpu.locked else 0.0,
                "managed": 1.0 if gpu.state is GpuState.MANAGED else 0.0,
                "degraded": 1.0 if gpu.state is GpuState.DEGRADED else 0.0,
                "restore_failed": 1.0 if gpu.state is GpuState.RESTORE_FAILED else 0.0,
                "guard": 1.0 if gpu.slo_guard_active else 0.0,
                "trips": gpu.slo_guard_trips,
            }
            running = {o.pod: (o.serving.running if o.serving else 0) for o in gpu.stages}
            for labels in _gpu_label_sets(agent, gpu):
                for key, family in g.items():
                    family.add_metric(labels, float(values[key]))
                for reason, count in sorted(gpu.decisions.items()):
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
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, count in zip((*TICK_BUCKETS_S, float("inf")), agent.tick_counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
        tick = HistogramMetricFamily(
            "triserve_agent_tick_seconds",
            "Wall time of one control tick for all GPUs",
            labels=("node",),
        )
        tick.add_metric([agent.node_name], buckets, agent.tick_sum_s)
        yield tick
        errors = CounterMetricFamily(
            "triserve_agent_errors", "Errors by kind", labels=("node", "kind")
        )
        for kind in sorted(set(ERROR_KINDS) | set(agent.errors)):
            errors.add_metric([agent.node_name, kind], float(agent.errors.get(kind, 0)))
        yield errors


def build_registry(agent: NodeAgent) -> CollectorRegistry:
    """A fresh registry holding only the agent's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))
    return registry


class MetricsServer:
    """`/metrics`, `/healthz`, `/readyz` on a daemon thread."""

    def __init__(
        self,
        registry: CollectorRegistry,
        port: int,
        host: str = "0.0.0.0",
        healthy: Callable[[], bool] = lambda: True,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        """`healthy`/`ready` are evaluated per request (on the server thread)."""
        self.registry = registry
        self.healthy = healthy
        self.ready = ready
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="triserve-metrics", daemon=True
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
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

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


def liveness(agent: NodeAgent, max_silence_s: float) -> Callable[[], bool]:
    """Healthy while the tick ran within `max_silence_s` of wall time."""
    state = {"last": time.monotonic(), "ticks": -1}

    def check() -> bool:
        ticks = sum(agent.tick_counts)
        if ticks != state["ticks"]:
            state["ticks"], state["last"] = ticks, time.monotonic()
        return time.monotonic() - state["last"] <= max_silence_s

    return check
