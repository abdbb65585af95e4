"""A simulated GPU node for `triserve agent --sim`, `triserve demo` and `triserve bench`.

`SimNode` stands in for the hardware, the kubelet and the exporters of one node: its backend
is the simulation's `SimBackend`, its stage placements become pods (manifests, resolved by
the same `stages.pod_from_manifest` as real ones, with the `triserve.io/gpus` annotation as
their GPU mapping), and telemetry is read the honest way — each stage's vLLM-format
exposition text parsed by `serving.parse_serving`, and the node's dcgm-exporter text parsed
by `dcgm.parse_dcgm`, at the agent's scrape interval (the exporter itself refreshes its
values at its own collection interval).
`drive()` advances the simulation with the wall clock times `speed` and runs the agent's
tick inside it every control interval of simulated time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from triserve.api.annotations import GPUS_ANNOTATION, PIPELINE_ANNOTATION, STAGE_ANNOTATION
from triserve.api.models import LabelSelector
from triserve.gpu.backend import GpuBackend, GpuError
from triserve.node_agent.agent import NodeAgent
from triserve.node_agent.dcgm import parse_dcgm
from triserve.node_agent.serving import parse_serving
from triserve.node_agent.stages import ServingPod, pod_from_manifest
from triserve.sim import Simulation, load_scenario

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
    ) -> None:
        """`publish_pods` False: pods and serving metrics come from elsewhere (a cluster)."""
        self.sim = sim
        self.agent = agent
        self.scrape_interval_s = scrape_interval_s
        self.publish = publish_pods
        self._next_scrape_s = 0.0
        self.pods: list[ServingPod] = []

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
        self.agent.tick(now_s)

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
                self.sim.run_until(target_s, on_tick=self.on_tick, tick_s=tick_s)
            if after_step is not None:
                after_step(self.sim.now_s)
            if end_s is not None and self.sim.now_s >= end_s - 1e-9:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=step_wall_s)
