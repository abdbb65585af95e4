"""A simulated GPU node for `triserve agent --sim`, `triserve demo` and `triserve bench`.

`SimNode` stands in for the hardware, the kubelet and the exporters of one node: its backend
is the simulation's `SimBackend`, its stage placements become pods (manifests, resolved by
the same `stages.pod_from_manifest` as real ones) whose GPUs it lists as the kubelet's
pod-resources API would (their `triserve.io/gpus` annotation counts only where a policy
trusts the namespace, `spec.gpuAnnotations`), and telemetry is read the honest way — each
stage's vLLM-format exposition text parsed by `serving.parse_serving`, and the node's
dcgm-exporter text parsed by `dcgm.parse_dcgm`, at the agent's scrape interval (the
exporter itself refreshes its values at its own collection interval).
`drive()` advances the simulation with the wall clock times `speed` and runs the agent's
tick inside it every control interval of simulated time.

With `hints=True` each stage's engine also sends stage hints, as an engine using
`triserve.hints` would: on every change of its own state (`Simulation.stage_activity`)
it encodes the event with the client's `encode` and the agent receives the bytes
`hint_latency_s` later through `NodeAgent.receive_hint` — the parser, rate limit and event
tick of production; only the socket is left out. Unchanged stages send a heartbeat every
`triserve.hints.HEARTBEAT_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from triserve import hints
from triserve.api.annotations import GPUS_ANNOTATION, PIPELINE_ANNOTATION, STAGE_ANNOTATION
from triserve.api.models import LabelSelector
from triserve.gpu.backend import GpuBackend, GpuError
from triserve.node_agent.agent import NodeAgent
from triserve.node_agent.dcgm import parse_dcgm
from triserve.node_agent.podresources import ContainerGpus
from triserve.node_agent.serving import parse_serving
from triserve.node_agent.stages import ServingPod, pod_from_manifest
from triserve.sim import Simulation, load_scenario
from triserve.sim.simulation import StageActivity

log = logging.getLogger(__name__)


def open_simulation(scenario: str, seed: int = 0) -> Simulation:
    """A `Simulation` of a named scenario (``reference``) or a scenario YAML path."""
    return Simulation(load_scenario(scenario), seed=seed)


def driver_for(sim: Simulation) -> Callable[[NodeAgent, bool, float], SimNode]:
    """`AgentOptions.node_driver` for `sim`: builds the `SimNode` the runtime drives."""

    def factory(agent: NodeAgent, publish: bool, scrape_interval_s: float) -> SimNode:
        return SimNode(sim, agent, scrape_interval_s=scrape_interval_s, publish_pods=publish)

    return factory


def open_node(
    scenario: str, seed: int = 0
) -> tuple[GpuBackend, Callable[[NodeAgent, bool, float], SimNode], str]:
    """For `triserve agent --sim`: (backend, driver factory, hostname) of a simulated node."""
    sim = open_simulation(scenario, seed=seed)
    return sim.backend, driver_for(sim), sim.scenario.hostname


class SimNode:
    """Pods, serving scrapes and simulated time for an agent on a simulated node."""

    def __init__(
        self,
        sim: Simulation,
        agent: NodeAgent,
        *,
        scrape_interval_s: float = 0.5,
        publish_pods: bool = True,
        hints: bool = False,
        hint_latency_s: float = 0.001,
    ) -> None:
        """`publish_pods` False: pods and serving metrics come from elsewhere (a cluster).

        `hints` True: the stages send stage hints, received `hint_latency_s` after the event.
        """
        self.sim = sim
        self.agent = agent
        self.scrape_interval_s = scrape_interval_s
        self.publish = publish_pods
        self.hints = hints
        self.hint_latency_s = hint_latency_s
        self._next_scrape_s = 0.0
        self.pods: list[ServingPod] = []
        self._sent: dict[str, StageActivity] = {}
        self._sent_s: dict[str, float] = {}
        #: Hint messages sent by the simulated engines.
        self.hints_sent = 0

    def manifests(self, selector: LabelSelector | None = None) -> list[dict[str, Any]]:
        """Pod manifests for the simulated stages, labelled to match `selector`'s labels.

        The simulated pods stand in for the serving pods the policy selects, so they carry
        its `podSelector.matchLabels` besides their own app labels.
        """
        extra = dict(selector.match_labels) if selector is not None else {}
        out = []
        for p in self.sim.placements:
            out.append(
                {
                    "metadata": {
                        "name": p.pod,
                        "namespace": p.namespace,
                        "uid": pod_uid(p.namespace, p.pod),
                        "labels": {
                            "app.kubernetes.io/name": p.stage,
                            "app.kubernetes.io/part-of": p.pipeline,
                            **extra,
                        },
                        "annotations": {
                            STAGE_ANNOTATION: p.stage,
                            PIPELINE_ANNOTATION: p.pipeline,
                            GPUS_ANNOTATION: str(p.gpu_index),
                        },
                    },
                    "spec": {
                        "nodeName": self.agent.node_name,
                        "containers": [{"name": p.container}],
                    },
                    "status": {"phase": "Running"},
                }
            )
        return out

    def publish_pods(self, selector: LabelSelector | None = None) -> None:
        """Hand the simulated stage pods to the agent."""
        resolved = (pod_from_manifest(m, self.agent.error) for m in self.manifests(selector))
        self.pods = [p for p in resolved if p is not None]
        self.agent.set_pods(self.pods)
        # What the kubelet's pod-resources API would list: each container's allocated GPU.
        self.agent.set_pod_resources(
            [
                ContainerGpus(
                    p.namespace,
                    p.pod,
                    p.container,
                    "nvidia.com/gpu",
                    (self.sim.backend.identity(p.gpu_index).uuid,),
                )
                for p in self.sim.placements
            ]
        )

    def now_s(self) -> float:
        """The simulated clock."""
        return self.sim.now_s

    def scrape(self, now_s: float) -> None:
        """Read dcgm-exporter and every stage's serving exposition if a scrape is due."""
        if not self.publish or now_s < self._next_scrape_s - 1e-9:
            return
        self._next_scrape_s = now_s + self.scrape_interval_s
        try:
            text = self.sim.dcgm_exposition(self.agent.node_name)
            self.agent.set_dcgm(parse_dcgm(text, now_s, self.agent.node_name))
        except (ValueError, GpuError) as exc:
            # A lost GPU breaks the simulated exporter's scrape, as a real one returns errors.
            self.agent.error("scrape", f"simulated dcgm-exporter: {exc}")
        for pod in self.pods:
            try:
                snapshot = parse_serving(self.sim.serving_exposition(pod.stage), now_s)
            except (ValueError, KeyError) as exc:
                self.agent.error("scrape", f"simulated pod {pod.ref}: {exc}")
                continue
            self.agent.set_serving(pod.key, snapshot)

    def on_tick(self, now_s: float) -> None:
        """What happens every control interval of simulated time: scrape if due, then tick."""
        self.scrape(now_s)
        if self.hints:
            self._heartbeats(now_s)
        self.agent.tick(now_s)

    def on_event(self, now_s: float) -> None:
        """After every simulated event: engines whose state changed send their hints."""
        if not self.hints:
            return
        for act in self.sim.stage_activity():
            old = self._sent.get(act.stage)
            if old == act:
                continue
            self._sent[act.stage] = act
            messages = []
            if old is None or old.phase != act.phase:
                if act.phase is None:
                    messages.append(hints.encode("idle"))
                else:
                    messages.append(hints.encode("busy", phase=act.phase))
            if old is None or (old.waiting, old.running) != (act.waiting, act.running):
                messages.append(hints.encode("queue", waiting=act.waiting, running=act.running))
            if old is not None and act.handoffs > old.handoffs:
                messages.append(hints.encode("handoff"))
            for message in messages:
                self._send(act.stage, message, now_s)

    def _heartbeats(self, now_s: float) -> None:
        for stage, sent_s in self._sent_s.items():
            if now_s - sent_s >= hints.HEARTBEAT_S:
                self._send(stage, hints.encode("alive"), now_s)

    def _send(self, stage: str, message: bytes, now_s: float) -> None:
        placement = self.sim.placement(stage)
        uid = pod_uid(placement.namespace, placement.pod)
        self._sent_s[stage] = now_s
        self.hints_sent += 1

        def deliver() -> None:
            self.agent.receive_hint(uid, message, self.sim.now_s)

        self.sim.call_at(now_s + self.hint_latency_s, deliver)

    async def drive(
        self,
        *,
        speed: float,
        tick_s: float,
        duration_s: float | None,
        stop: asyncio.Event,
        after_step: Callable[[float], None] | None = None,
        step_wall_s: float = 0.05,
    ) -> None:
        """Advance the simulation at `speed` x wall clock until `duration_s` or `stop`.

        The agent's tick runs inside the simulation every `tick_s` simulated seconds;
        `after_step(now_s)` runs once per wall-clock step (watchdog beat, live view).
        """
        wall0, sim0 = time.monotonic(), self.sim.now_s
        end_s = sim0 + duration_s if duration_s is not None else None
        while not stop.is_set():
            target_s = sim0 + (time.monotonic() - wall0) * speed
            if end_s is not None:
                target_s = min(target_s, end_s)
            if target_s > self.sim.now_s:
                self.sim.run_until(
                    target_s, on_tick=self.on_tick, tick_s=tick_s, on_event=self.on_event
                )
            if after_step is not None:
                after_step(self.sim.now_s)
            if end_s is not None and self.sim.now_s >= end_s - 1e-9:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=step_wall_s)


def pod_uid(namespace: str, name: str) -> str:
    """The simulated pod's metadata.uid: stable for its namespace and name."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"triserve-sim:{namespace}/{name}"))
