"""The node agent's core: one control tick over every GPU, orchestrating parts with one job each.

Fed policy, pods, device data, scrapes and hints by the sources, scrapers, hint server and
simulated node; `tick(now_s)` runs every GPU's `ControlLoop` and never waits on the network;
a lock keeps the exporter's view consistent. Parts: `inventory.GpuInventory` (which GPUs,
re-read every few seconds), `inputs.NodeInputs` (inputs, mapping, MIG), `governor.Governor`
(which GPUs are governed, how), `releases.Releases` (verified restores, retries, shutdown,
watchdog), `gpus.GpuRuntime` (a GPU's loop and its one count of tick results), `accounting`,
`observations.StageIndex`, `errors.ErrorCounts`. A GPU failing `max_gpu_errors` calls in a
row is restored and Degraded; a hint that changes a decision steps the affected GPUs at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from triserve.api.powercaps import PowerCaps
from triserve.api.status import GpuState
from triserve.control import ProbeSettings
from triserve.gpu.backend import GpuBackend, GpuError
from triserve.node_agent.accounting import TickMeter, TokenMeter
from triserve.node_agent.dcgm import DcgmSnapshot
from triserve.node_agent.errors import ErrorCounts, ErrorKind
from triserve.node_agent.governor import Governor, LoopFactory, PolicyRef
from triserve.node_agent.gpus import GpuRuntime
from triserve.node_agent.hints import HintBook
from triserve.node_agent.inputs import NodeInputs, PodKey
from triserve.node_agent.inventory import GpuInventory
from triserve.node_agent.observations import StageIndex
from triserve.node_agent.podresources import ContainerGpus
from triserve.node_agent.releases import Releases
from triserve.node_agent.safety import GuardedBackend, GuardRails, StateFile
from triserve.node_agent.sampling import GpuSampler
from triserve.node_agent.stages import ServingPod
from triserve.telemetry import ServingSnapshot

log = logging.getLogger(__name__)

__all__ = ["LoopFactory", "NodeAgent", "PolicyRef"]


class NodeAgent:
    """Governs every GPU of one node under one policy (or none)."""

    def __init__(
        self,
        backend: GpuBackend,
        node_name: str,
        state: StateFile,
        *,
        max_gpu_errors: int = 3,
        probe: ProbeSettings | None = None,
        loop_factory: LoopFactory | None = None,
        rails: GuardRails | None = None,
        shutdown_retry_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        max_input_age_s: float = 5.0,
        hint_tick_min_s: float = 0.005,
        dcgm_period_s: float = 30.0,
        on_policy_change: Callable[[PolicyRef | None], None] | None = None,
    ) -> None:
        """Samples `backend` (`GpuSampler`), sets it through a `GuardedBackend` over `state`.

        `loop_factory` None: the policy's strategy (the bench injects rows); `rails`: cluster
        floors; `max_input_age_s`: the oldest scrape acted on; `hint_tick_min_s`: least time
        between hint steps of a GPU; `on_policy_change(policy)`: called after a change.
        """
        self.node_name = node_name
        self.backend = GuardedBackend(backend, state, rails)
        self.sampler = GpuSampler(backend, dcgm_period_s)
        self.state_file = state
        self.max_gpu_errors = max_gpu_errors
        self.max_input_age_s = max_input_age_s
        self.hint_tick_min_s = hint_tick_min_s
        self.lock = threading.RLock()
        self.policy: PolicyRef | None = None
        self.errors = ErrorCounts()
        self.releases = Releases(
            self.backend, self.errors, shutdown_retry_s=shutdown_retry_s, sleep=sleep
        )
        self.inventory = GpuInventory(backend, self.errors, probe or ProbeSettings())
        self.gpus = self.inventory.discover(0.0)  # {} while NVML does not answer: retried
        self.governor = Governor(self.backend, self.releases, self.errors, loop_factory)
        state.report_write_errors(lambda message: self.error(ErrorKind.STATE_FILE, message))
        self.inputs = NodeInputs([g.identity for g in self.gpus.values()])
        self.hints = HintBook()
        self.tokens = TokenMeter()
        self.ticks = TickMeter(node_name)
        self.last_tick_s: float | None = None
        self.ready = False
        self._rebuild_loops = False
        self._on_policy_change = on_policy_change
        #: The operator's power caps for this node (the triserve.io/power-caps annotation).
        self.power_caps: PowerCaps | None = None

    def is_ready(self) -> bool:
        """Ready once the first tick ran (for `/readyz`)."""
        return self.ready

    def error(self, kind: ErrorKind | str, message: str) -> None:
        """Count and log an error that was skipped (`triserve_agent_errors_total{kind}`)."""
        self.errors.count(kind, message)

    def startup(self) -> list[int]:
        """Restore every GPU an earlier agent left locked (once NVML answers); those verified."""
        with self.lock:
            return self.releases.startup(self.gpus) if self.inventory.found else []

    def set_policy(self, policy: PolicyRef | None) -> None:
        """Follow `policy` (None: release every GPU). A changed spec rebuilds every loop."""
        with self.lock:
            if policy == self.policy:
                return
            old, self.policy = self.policy, policy
            now_s = self.last_tick_s or 0.0
            if old is not None:
                self.releases.leaving(old.name)
            for gpu in self.gpus.values():
                if gpu.governed:
                    self.releases.release(gpu, GpuState.RELEASED, "policy changed", now_s)
            self.releases.settled()
            if policy is None:
                log.info("no policy for node %s: every GPU released", self.node_name)
            else:
                self.backend.forget_clamps()  # a new policy starts with a clean record
                log.info(
                    "following policy %s (generation %d, was %s)",
                    policy.name, policy.generation, old.name if old else "none",
                )  # fmt: skip
            self.inputs.invalidate_mapping()
        if self._on_policy_change is not None:
            self._on_policy_change(policy)

    def set_power_caps(self, caps: PowerCaps | None) -> None:
        """The operator's per-GPU power caps for this node (None: none written yet)."""
        with self.lock:
            self.power_caps = caps

    def power_ceiling_mw(self, gpu: GpuRuntime) -> int | None:
        """The power-budget ceiling for `gpu`: its cap, or its minimum limit until it has one.

        None when the policy has no power budget, or the GPU is only observed. A cap written
        for another policy does not count: until the operator writes this policy's, the GPU
        waits at its minimum limit.
        """
        policy, loop = self.policy, gpu.loop
        if policy is None or policy.spec.power_budget is None or loop is None:
            return None
        if not loop.actuate:  # Observe sets nothing, the cap included
            return None
        caps = self.power_caps
        watts = caps.watts.get(gpu.identity.uuid) if caps and caps.policy == policy.name else None
        if watts is None:
            return loop.limits.power_min_mw
        return min(max(watts * 1000, loop.limits.power_min_mw), loop.limits.power_max_mw)

    def set_pods(self, pods: Iterable[ServingPod]) -> None:
        """Replace the set of serving pods on this node."""
        with self.lock:
            self.inputs.set_pods(pods)
            self.hints.keep(set(self.inputs.pods))

    def set_pod_resources(self, entries: Sequence[ContainerGpus] | None) -> None:
        """New pod-resources data (None: the kubelet could not be asked)."""
        with self.lock:
            self.inputs.set_pod_resources(entries)

    def set_dcgm(self, snapshot: DcgmSnapshot | None) -> None:
        """New dcgm-exporter data; remaps pods only when its pod labels changed."""
        with self.lock:
            self.inputs.set_dcgm(snapshot)
            self.sampler.use_dcgm(snapshot, (g.identity for g in self.gpus.values()))

    def set_serving(
        self,
        key: PodKey,
        snapshot: ServingSnapshot,
        engines: Mapping[str, ServingSnapshot] | None = None,
    ) -> None:
        """A fresh scrape of pod `key`'s serving metrics (`engines`: per data-parallel engine)."""
        with self.lock:
            self.inputs.set_serving(key, snapshot, engines or {})

    def knows_pod(self, uid: str) -> bool:
        """True when `uid` is a serving pod on this node (the hint endpoint asks)."""
        with self.lock:
            return self.inputs.pod_of(uid) is not None

    def hint_refused(self, why: str) -> None:
        """The hint endpoint refused a connection (`triserve_agent_hints_total{refused}`)."""
        with self.lock:
            self.hints.refused(why)

    def receive_hint(self, uid: str, data: bytes, now_s: float) -> bool:
        """One hint message from the pod with UID `uid`, at `now_s` (tick clock); never raises.

        Runs the affected GPUs' control step at once when the hint changes what they would
        decide. False when the pod is over its rate (the endpoint pauses that connection).
        """
        with self.lock:
            key = self.inputs.pod_of(uid)
            admitted, changed = self.hints.take(key, data, now_s)
            if admitted and key is not None:
                self.inputs.invalidate_stages()
                if changed and self.ready:
                    self._hint_tick(key, now_s)
            return admitted

    def _hint_tick(self, key: PodKey, now_s: float) -> None:
        """Run the control step of every GPU the hinting pod runs on or feeds, now."""
        if (pod := self.inputs.pods.get(key)) is None:
            return
        self._refresh_stages()
        started = time.perf_counter()
        stepped = 0
        for gpu in self.gpus.values():
            loop = gpu.loop
            if loop is None or not gpu.runs or not gpu.affected_by(pod):
                continue
            last = loop.last_result
            if last is not None and now_s - last.now_s < self.hint_tick_min_s:
                continue
            self._tick_gpu(gpu, now_s)
            stepped += 1
        if stepped:
            self.ticks.observe(time.perf_counter() - started, hint_steps=stepped)

    def scrape_targets(self) -> list[tuple[PodKey, str]]:
        """(pod key, metrics URL) of every pod the policy selects that exposes metrics."""
        with self.lock:
            return [(p.key, url) for p in self._selected() if (url := p.metrics_url()) is not None]

    def tick(self, now_s: float) -> None:
        """One control step for every GPU at `now_s` (seconds, the backend's clock)."""
        started = time.perf_counter()
        with self.lock:
            self.last_tick_s = now_s
            if self._rebuild_loops:
                self._rebuild_loops = False
                self.governor.rebuild(self.gpus, self.policy)
            if self.inventory.due(now_s):
                self._rescan(now_s)
            if self.inputs.remap_due:
                self._remap()
            if self.inputs.stages_due:
                self._refresh_stages()
            if self.releases.retry(self.gpus, now_s):
                self.inputs.invalidate_mapping()  # a released GPU may be governed again
            if self.policy is None:
                self.releases.settled()
            age_s = self.sampler.expire_dcgm(now_s, self.max_input_age_s)
            if age_s is not None:
                self.error(ErrorKind.STALE, f"dcgm-exporter data is {age_s:.1f} s old; dropped")
            for gpu in self.gpus.values():
                if gpu.runs:
                    self._tick_gpu(gpu, now_s)
            self.ready = True
        self.ticks.observe(time.perf_counter() - started)

    def _tick_gpu(self, gpu: GpuRuntime, now_s: float) -> None:
        if gpu.loop is not None:
            gpu.loop.power_ceiling_mw = self.power_ceiling_mw(gpu)
        try:
            gpu.step(self.sampler.sample(gpu.index), now_s)
        except GpuError as exc:
            failures = gpu.failed_call()
            self.error(ErrorKind.NVML, f"GPU {gpu.index}: {type(exc).__name__}: {exc}")
            if failures >= self.max_gpu_errors:
                message = f"{failures} GPU errors in a row (last: {exc}); left at defaults"
                self.releases.release(gpu, GpuState.DEGRADED, message, now_s)
                log.error("GPU %d degraded: %s", gpu.index, message)

    def _rescan(self, now_s: float) -> None:
        """Re-read the GPUs: found at last (start-up restore), enumerated again, MIG switched."""
        if self.releases.rescanned(self.gpus, self.inventory.rescan(self.gpus, now_s), now_s):
            self.inputs.set_gpus([g.identity for g in self.gpus.values()])

    def _selected(self) -> list[ServingPod]:
        return self.inputs.selected(self.policy.spec.pod_selector if self.policy else None)

    def _remap(self) -> None:
        selected = self._selected()
        trusted = self.policy.spec.gpu_annotations.trusted_namespaces if self.policy else []
        mapping = self.inputs.placements(
            selected, lambda _pod, why: self.error(ErrorKind.MAPPING, why), trusted
        )
        now_s = self.last_tick_s or 0.0
        self.governor.apply(self.gpus, self.policy, selected, mapping, self.inputs, now_s)

    def _refresh_stages(self) -> None:
        """Rebuild each GPU's stage observations from the latest scrapes and hints."""
        inputs = self.inputs
        inputs.stages_refreshed()
        index = StageIndex(
            self._selected(),
            inputs.serving,
            inputs.serving_engines,
            self.hints.hint,
            self.max_input_age_s,
        )
        gpus_of: dict[PodKey, list[GpuRuntime]] = {}
        for gpu in self.gpus.values():
            gpu.observe_stages(index.for_gpu(gpu.placements))
            for placement in gpu.placements:
                gpus_of.setdefault(placement.pod.key, []).append(gpu)
        self.tokens.count(inputs.serving, gpus_of)

    def shutdown(self, reason: str = "agent stopping") -> list[int]:
        """Restore every GPU (SIGTERM, end of a run), retrying for up to `shutdown_retry_s`.

        Returns the indices still not restored (the state file keeps them for the next agent).
        """
        with self.lock:
            policy, self.policy = self.policy, None
            name = policy.name if policy else ""
            self.releases.release_all(self.gpus, name, reason, self.last_tick_s or 0.0)
        failed = self.releases.restore_all(self.gpus, reason, self.last_tick_s or 0.0)
        self.inputs.invalidate_mapping()  # a GPU whose restore verified may be governed again
        return failed

    def on_watchdog(self, silent_s: float) -> None:
        """Called from the watchdog thread: the tick is stuck, so restore without the lock."""
        self.releases.on_watchdog(silent_s)
        # The loops still believe their locks are applied: rebuild them when ticks resume.
        self._rebuild_loops = True
