"""The node agent's core: one control tick over every GPU, and the state around it.

`NodeAgent` is fed from outside — policy (`set_policy`), pods (`set_pods`), pod-resources
and dcgm data (`set_pod_resources`, `set_dcgm`), serving scrapes (`set_serving`) — by the
cluster or standalone sources, the scrapers and the simulated node; `tick(now_s)` then runs
every GPU's `ControlLoop` synchronously. Nothing in a tick waits on the network: scrapes
land asynchronously and the tick reads the latest. A lock guards the state so that the
exporter thread (`triserve.node_agent.exporter`) reads a consistent view.

Safety lives here too: every GPU that leaves management is restored at once, and a restore
counts only once it is read back (`triserve.node_agent.restore`); one that does not verify
leaves the GPU `RestoreFailed` (never Released) and is retried on later ticks with backoff.
A GPU whose backend calls fail `max_gpu_errors` times in a row is restored and marked
Degraded while the others keep running; `shutdown()` restores everything (SIGTERM/SIGINT),
retrying for up to `shutdown_retry_s`; `on_watchdog` is what the watchdog thread calls when
ticks stop.

Each tick also feeds every GPU's `GpuRuntime` (energy, the baseline estimate), which may ask
its loop for a short baseline probe at the PMU default (`ProbeSettings`, `probe=`).

Telemetry scope (docs/telemetry.md): only pods the policy selects are scraped
(`scrape_targets`), signals of neighbouring stages (upstream stalls, downstream queues) come
only from selected pods of the same namespace and pipeline (`triserve.node_agent.observations`
assembles them), a data-parallel server's engines are attributed to its GPUs in
device order, every stage observation carries `max_input_age_s` so a loop falls back to the
PMU default on stale data, dcgm-exporter activity older than that is dropped, and a GPU in
MIG mode is observed, not governed (its clocks are shared by every MIG instance), unless the
policy opts in with `mig.mode: GovernWhenExclusive` and every instance runs its pods.

Stage hints (`receive_hint`, fed by `triserve.node_agent.hintserver` or the simulated node)
ride along in each stage observation; a hint that changes what a controller would decide
runs the affected GPUs' control step at once (an event tick, at most one per GPU every
`hint_tick_min_s`), and hints that stop arriving go stale, so the loops fall back to the
scrapes by themselves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import Histogram

from triserve.api.models import EnergyPolicySpec, MigMode, PolicyMode
from triserve.api.selectors import matches
from triserve.api.status import GpuState
from triserve.control import ControlLoop, ControlSettings
from triserve.gpu.backend import GpuBackend, GpuError, GpuIdentity
from triserve.node_agent.dcgm import DcgmSnapshot
from triserve.node_agent.gpumap import GpuIndex, map_pods
from triserve.node_agent.gpus import GpuRuntime, ProbeSettings
from triserve.node_agent.hints import UNKNOWN_POD, HintBook, HintError
from triserve.node_agent.observations import StageIndex
from triserve.node_agent.podresources import ContainerGpus
from triserve.node_agent.restore import RetryPlan, restore_gpu
from triserve.node_agent.safety import GuardedBackend, GuardRails, StateFile, restore_stale
from triserve.node_agent.sampling import GpuSampler
from triserve.node_agent.stages import ServingPod
from triserve.telemetry import ServingSnapshot

log = logging.getLogger(__name__)

#: Upper bounds (s) of the `triserve_agent_tick_seconds` histogram.
TICK_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


#: Builds one GPU's control loop: (backend, GPU index, the policy's settings) -> loop.
LoopFactory = Callable[[GpuBackend, int, ControlSettings], ControlLoop]


def _policy_loop(backend: GpuBackend, index: int, settings: ControlSettings) -> ControlLoop:
    """The production loop: the strategy the policy's settings name."""
    return ControlLoop(backend, index, None, settings)


@dataclass(frozen=True, slots=True)
class PolicyRef:
    """The policy the node follows: its name, generation and validated spec."""

    name: str
    spec: EnergyPolicySpec
    generation: int = 0


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
    ) -> None:
        """Samples `backend` through a `GpuSampler` and sets it through a `GuardedBackend`.

        The guard records every setter in `state` before it reaches the GPU.

        `probe` sets the baseline probes (`triserve.node_agent.gpus`); None: the defaults.
        `loop_factory` builds each governed GPU's `ControlLoop` from the policy's settings;
        None builds the strategy the policy names (the bench injects its own rows here).
        `rails` are the cluster's floors on clocks and power. `shutdown_retry_s` bounds how
        long `shutdown` keeps retrying restores that do not verify (`sleep` between tries).
        `max_input_age_s` is how old a scrape may be before controllers stop acting on it.
        `hint_tick_min_s` is the least time between two control steps of a GPU that hints
        start (a burst of hints folds into the next step). `dcgm_period_s` is
        dcgm-exporter's collection interval (`GpuSampler`).
        """
        self.loop_factory: LoopFactory = loop_factory or _policy_loop
        self.node_name = node_name
        self.backend = GuardedBackend(backend, state, rails)
        self.sampler = GpuSampler(backend, dcgm_period_s)
        self.state_file = state
        self.max_gpu_errors = max_gpu_errors
        self.shutdown_retry_s = shutdown_retry_s
        self._sleep = sleep
        self.lock = threading.RLock()
        self.policy: PolicyRef | None = None
        #: The last policy whose GPUs are not all verified restored ('' when none).
        self.releasing_policy = ""
        #: GPU index → when to retry a restore that did not verify.
        self.unrestored: dict[int, RetryPlan] = {}
        #: GPU index → the state it takes once its pending restore verifies.
        self._after_restore: dict[int, tuple[GpuState, str]] = {}
        #: Report condition type → (status, lastTransitionTime) as last reported.
        self.condition_since: dict[str, tuple[str, str]] = {}
        self.probe = probe if probe is not None else ProbeSettings()
        self.gpus = {
            i: GpuRuntime(identity=_identity(backend, i), probe=self.probe)
            for i in range(backend.device_count())
        }
        for gpu in self.gpus.values():
            if not gpu.identity.uuid:
                gpu.state, gpu.message = GpuState.DEGRADED, "GPU did not answer at start-up"
        state.on_write_error = lambda message: self.error("state-file", message)
        self._gpu_index = GpuIndex([g.identity for g in self.gpus.values()])
        self.pods: dict[tuple[str, str], ServingPod] = {}
        self.pod_resources: list[ContainerGpus] | None = None
        self.dcgm: DcgmSnapshot | None = None
        self.serving: dict[tuple[str, str], ServingSnapshot] = {}
        self.serving_engines: dict[tuple[str, str], Mapping[str, ServingSnapshot]] = {}
        self.max_input_age_s = max_input_age_s
        self.hints = HintBook()
        self.hint_tick_min_s = hint_tick_min_s
        #: Control steps run on receipt of a hint (`triserve_agent_hint_ticks_total`).
        self.hint_ticks = 0
        self._uids: dict[str, tuple[str, str]] = {}
        self._tokens_seen: dict[tuple[str, str], float] = {}
        self.errors: Counter[str] = Counter()
        #: Wall time of each tick; unregistered here, `exporter.build_registry` exposes it.
        self.tick_seconds = Histogram(
            "triserve_agent_tick_seconds",
            "Wall time of one control tick for all GPUs",
            labelnames=("node",),
            buckets=TICK_BUCKETS_S,
            registry=None,
        )
        self._tick_seconds_here = self.tick_seconds.labels(node=node_name)
        #: Control steps run so far, hint-driven ones included (liveness watches it move).
        self.ticks_run = 0
        self.last_tick_s: float | None = None
        self.ready = False
        self._dirty = True
        self._serving_dirty = True
        self._rebuild_loops = False
        #: Called (on the caller's thread) after the policy changed, e.g. to report at once.
        self.on_policy_change: Callable[[PolicyRef | None], None] | None = None

    def is_ready(self) -> bool:
        """Ready once the first tick ran (for `/readyz`)."""
        return self.ready

    # ---- inputs -------------------------------------------------------------------------
    def error(self, kind: str, message: str) -> None:
        """Count and log an error that was skipped (`triserve_agent_errors_total{kind}`)."""
        self.errors[kind] += 1
        log.warning("%s error: %s", kind, message)

    def startup(self) -> list[int]:
        """Restore every GPU the state file says an earlier agent left locked.

        Returns the indices verified at defaults; the others are retried on later ticks.
        """
        result = restore_stale(self.backend.inner, self.state_file)
        if result.restored:
            log.warning(
                "restored default clocks on GPUs %s left locked by an earlier run",
                result.restored,
            )
        with self.lock:
            for index, problem in result.failed.items():
                gpu = self.gpus.get(index)
                if gpu is not None:
                    self._restore_failed(gpu, 0.0, problem)
        return result.restored

    def set_policy(self, policy: PolicyRef | None) -> None:
        """Follow `policy` (None: release every GPU). A changed spec rebuilds every loop."""
        with self.lock:
            if policy == self.policy:
                return
            old, self.policy = self.policy, policy
            if old is not None:
                self.releasing_policy = old.name
            for gpu in self.gpus.values():
                if gpu.governed:
                    self._release(gpu, GpuState.RELEASED, "policy changed")
            if not self.unrestored:
                self.releasing_policy = ""
            if policy is None:
                log.info("no policy for node %s: every GPU released", self.node_name)
            else:
                self.backend.clamped.clear()  # a new policy starts with a clean record
                log.info(
                    "following policy %s (generation %d, was %s)",
                    policy.name, policy.generation, old.name if old else "none",
                )  # fmt: skip
            self._dirty = True
        if self.on_policy_change is not None:
            self.on_policy_change(policy)

    def set_pods(self, pods: Iterable[ServingPod]) -> None:
        """Replace the set of serving pods on this node."""
        with self.lock:
            self.pods = {p.key: p for p in pods}
            self._uids = {p.uid: p.key for p in self.pods.values() if p.uid}
            self.hints.keep(set(self.pods))
            self.serving = {k: v for k, v in self.serving.items() if k in self.pods}
            self.serving_engines = {k: v for k, v in self.serving_engines.items() if k in self.pods}
            self._dirty = True

    def set_pod_resources(self, entries: Sequence[ContainerGpus] | None) -> None:
        """New pod-resources data (None: the kubelet could not be asked)."""
        with self.lock:
            new = list(entries) if entries is not None else None
            if new != self.pod_resources:
                self.pod_resources = new
                self._dirty = True

    def set_dcgm(self, snapshot: DcgmSnapshot | None) -> None:
        """New dcgm-exporter data; remaps pods only when its pod labels changed."""
        with self.lock:
            old = self.dcgm
            self.dcgm = snapshot
            self.sampler.use_dcgm(snapshot, (g.identity for g in self.gpus.values()))
            if old is None or snapshot is None or _dcgm_pods(old) != _dcgm_pods(snapshot):
                self._dirty = True

    def set_serving(
        self,
        key: tuple[str, str],
        snapshot: ServingSnapshot,
        engines: Mapping[str, ServingSnapshot] | None = None,
    ) -> None:
        """A fresh scrape of pod `key`'s serving metrics (`engines`: per data-parallel engine)."""
        with self.lock:
            if key in self.pods:
                self.serving[key] = snapshot
                self.serving_engines[key] = dict(engines or {})
                self._serving_dirty = True

    def knows_pod(self, uid: str) -> bool:
        """True when `uid` is a serving pod on this node (the hint endpoint asks)."""
        with self.lock:
            return uid in self._uids

    def receive_hint(self, uid: str, data: bytes, now_s: float) -> bool:
        """One hint message from the pod with UID `uid`, received at `now_s` (tick clock).

        Never raises: a malformed message is counted (`triserve_agent_hints_total`) and
        dropped. Runs the affected GPUs' control step at once when the hint changes what
        they would decide. Returns False when the pod is over its rate (the endpoint then
        pauses that connection).
        """
        with self.lock:
            key = self._uids.get(uid)
            if key is None:
                self.hints.counts[UNKNOWN_POD] += 1
                return True
            if not self.hints.admit(key, now_s):
                return False
            try:
                changed = self.hints.receive_admitted(key, data, now_s)
            except HintError as exc:
                # Counted, logged quietly: a broken sender must not flood the agent's log.
                log.debug("hint from pod %s/%s dropped: %s", *key, exc)
                return True
            self._serving_dirty = True
            if changed and self.ready:
                self._hint_tick(key, now_s)
        return True

    def _hint_tick(self, key: tuple[str, str], now_s: float) -> None:
        """Run the control step of every GPU the hinting pod runs on or feeds, now."""
        pod = self.pods.get(key)
        if pod is None:
            return
        self._refresh_stages()
        started = time.perf_counter()
        ran = False
        for gpu in self.gpus.values():
            loop = gpu.loop
            if loop is None or gpu.state in (GpuState.DEGRADED, GpuState.RESTORE_FAILED):
                continue
            if not any(
                p.pod.key == key
                or (
                    p.pod.namespace == pod.namespace
                    and p.pod.pipeline == pod.pipeline
                    and pod.stage in p.pod.upstream
                )
                for p in gpu.placements
            ):
                continue
            last = loop.last_result
            if last is not None and now_s - last.now_s < self.hint_tick_min_s:
                continue
            self._tick_gpu(gpu, now_s)
            self.hint_ticks += 1
            ran = True
        if ran:
            self._observe_tick(time.perf_counter() - started)

    def scrape_targets(self) -> list[tuple[tuple[str, str], str]]:
        """(pod key, metrics URL) of every pod the policy selects that exposes metrics."""
        with self.lock:
            pods = self._selected()
        return [(p.key, url) for p in pods if (url := p.metrics_url()) is not None]

    # ---- the tick -----------------------------------------------------------------------
    def tick(self, now_s: float) -> None:
        """One control step for every GPU at `now_s` (seconds, the backend's clock)."""
        started = time.perf_counter()
        with self.lock:
            self.last_tick_s = now_s
            if self._rebuild_loops:
                self._rebuild()
            if self._dirty:
                self._remap()
            if self._serving_dirty:
                self._refresh_stages()
            self._retry_restores(now_s)
            self._expire_dcgm(now_s)
            for gpu in self.gpus.values():
                if gpu.state not in (GpuState.DEGRADED, GpuState.RESTORE_FAILED):
                    self._tick_gpu(gpu, now_s)
            self.ready = True
        self._observe_tick(time.perf_counter() - started)

    def _observe_tick(self, elapsed_s: float) -> None:
        """Count a control step (periodic or hint-driven) and its wall time."""
        self._tick_seconds_here.observe(elapsed_s)
        self.ticks_run += 1

    def _expire_dcgm(self, now_s: float) -> None:
        """Stop filling in dcgm-exporter activity once its last scrape is too old."""
        age_s = self.sampler.expire_dcgm(now_s, self.max_input_age_s)
        if age_s is not None:
            self.error("stale", f"dcgm-exporter data is {age_s:.1f} s old; its activity dropped")

    def _tick_gpu(self, gpu: GpuRuntime, now_s: float) -> None:
        try:
            sample = self.sampler.sample(gpu.index)
            result = gpu.loop.tick(now_s, gpu.stages, sample) if gpu.loop is not None else None
        except GpuError as exc:
            self._gpu_error(gpu, exc)
            return
        gpu.consecutive_errors = 0
        if result is not None:
            gpu.account(result)
        else:
            gpu.observe_unmanaged(sample)

    def _gpu_error(self, gpu: GpuRuntime, exc: GpuError) -> None:
        gpu.consecutive_errors += 1
        self.error("nvml", f"GPU {gpu.index}: {type(exc).__name__}: {exc}")
        if gpu.consecutive_errors < self.max_gpu_errors:
            return
        message = f"{gpu.consecutive_errors} GPU errors in a row (last: {exc}); left at defaults"
        self._release(gpu, GpuState.DEGRADED, message)
        log.error("GPU %d degraded: %s", gpu.index, message)

    def _rebuild(self) -> None:
        self._rebuild_loops = False
        for gpu in self.gpus.values():
            if gpu.governed and self.policy is not None:
                # The watchdog reset the GPU but kept its record: the new loop starts from
                # the PMU default and the record goes when a later release verifies.
                gpu.detach(gpu.state, "restored by the watchdog")
                self._govern(gpu, self.policy)

    # ---- mapping and loops --------------------------------------------------------------
    def _selected(self) -> list[ServingPod]:
        if self.policy is None:
            return []
        selector = self.policy.spec.pod_selector
        return [p for p in self.pods.values() if matches(selector, p.labels)]

    def _remap(self) -> None:
        self._dirty = False
        selected = self._selected()
        mapping = map_pods(
            selected,
            self._gpu_index,
            self.pod_resources,
            self.dcgm,
            on_unmapped=lambda pod, why: self.error("mapping", why),
        )
        for gpu in self.gpus.values():
            gpu.placements = mapping.get(gpu.index, [])
            if gpu.state in (GpuState.DEGRADED, GpuState.RESTORE_FAILED):
                continue
            opted_out = [p.pod.ref for p in gpu.placements if p.pod.opt_out]
            if self.policy is None or not gpu.placements or opted_out:
                if gpu.governed:
                    why = (
                        f"opted out by {', '.join(opted_out)}"
                        if opted_out
                        else "no policy"
                        if self.policy is None
                        else "no serving pod left on this GPU"
                    )
                    self._release(gpu, GpuState.RELEASED, why)
                elif opted_out:
                    gpu.message = f"opted out by {', '.join(opted_out)}"
                continue
            mig_reason = self._mig_reason(gpu, selected)
            if mig_reason is not None and gpu.state is GpuState.MANAGED:
                self._release(gpu, GpuState.RELEASED, mig_reason)
            if not gpu.governed:
                self._govern(gpu, self.policy, observe_only=mig_reason)
        self._serving_dirty = True

    def _mig_reason(self, gpu: GpuRuntime, selected: Sequence[ServingPod]) -> str | None:
        """Why a GPU in MIG mode may only be observed, or None (not MIG, or governable).

        Clocks are per physical GPU and shared by every MIG instance. Only a policy with
        ``mig.mode: GovernWhenExclusive`` may govern one, and only while dcgm-exporter shows a
        pod on every instance and each of those pods is one the policy selects.
        """
        entry = self.dcgm.for_gpu(gpu.index, gpu.identity.uuid) if self.dcgm else None
        if not gpu.identity.mig_enabled and (entry is None or not entry.mig):
            return None
        shared = "MIG mode: SM clocks are per physical GPU and shared by every MIG instance"
        if self.policy is None or self.policy.spec.mig.mode is not MigMode.GOVERN_WHEN_EXCLUSIVE:
            return f"{shared}, so the GPU is observed, not governed (see spec.mig.mode)"
        if entry is None or not entry.mig:
            return (
                f"{shared}; mig.mode GovernWhenExclusive needs dcgm-exporter's per-instance "
                "series with pod labels to check every instance, and none are seen: observed"
            )
        ours = {p.key for p in selected}
        for instance_id, instance in sorted(entry.instances.items()):
            pods = {(ns, name) for ns, name, _container in instance.pods}
            if not pods:
                return f"{shared}; MIG instance {instance_id} has no pod, so it is observed"
            foreign = sorted(f"{ns}/{name}" for ns, name in pods - ours)
            if foreign:
                return (
                    f"{shared}; MIG instance {instance_id} runs {', '.join(foreign[:3])}, which "
                    "this policy does not select, so the GPU is observed"
                )
        return None

    def _govern(self, gpu: GpuRuntime, policy: PolicyRef, observe_only: str | None = None) -> None:
        observe = observe_only is not None or policy.spec.mode is PolicyMode.OBSERVE
        try:
            settings = ControlSettings.from_policy(policy.spec)
            loop = self.loop_factory(self.backend, gpu.index, settings)
            if observe:
                loop.actuate = False
        except (ValueError, GpuError) as exc:
            self.error("policy", f"GPU {gpu.index}: cannot apply policy {policy.name}: {exc}")
            gpu.message = f"policy {policy.name} cannot run here: {exc}"
            return
        state = GpuState.OBSERVED if observe else GpuState.MANAGED
        verb = "observing" if observe else "managing"
        message = f"{verb} under {policy.name} ({policy.spec.strategy.value})"
        static = settings.static_clock_mhz
        if static is not None and static > loop.limits.max_mhz:
            # The CRD bounds the field by what any GPU might take; this GPU takes less.
            clamp = (
                f"staticClock.smClockMHz {static} is above GPU {gpu.index}'s highest clock "
                f"{loop.limits.max_mhz} MHz: locked at {loop.limits.max_mhz} MHz; "
                "lower spec.staticClock.smClockMHz"
            )
            self.error("policy", clamp)
            message = f"{message}; {clamp}"
        gpu.attach(loop, state, f"{message}: {observe_only}" if observe_only else message)
        gpu.window.start_s = self.last_tick_s or 0.0
        log.info("GPU %d: %s", gpu.index, gpu.message)

    def _release(self, gpu: GpuRuntime, state: GpuState, message: str) -> None:
        """Restore the GPU's defaults and stop governing it (errors are logged, not raised).

        The GPU is `state` only once the restore is read back; otherwise `RestoreFailed`.
        """
        try:
            if gpu.loop is not None:
                gpu.loop.release()
        except GpuError as exc:
            self.error("nvml", f"GPU {gpu.index}: handing clocks back failed: {exc}")
        held = gpu.identity.uuid in self.state_file.held() or any(
            e.get("index") == gpu.index for e in self.state_file.held().values()
        )
        gpu.detach(state, message)
        if held or state is GpuState.DEGRADED:
            problem = self.backend.restore(gpu.index)
            if problem is not None:
                self._after_restore[gpu.index] = (state, message)
                self._restore_failed(gpu, self.last_tick_s or 0.0, problem)
                return
        log.info("GPU %d released (%s): %s", gpu.index, state.value, message)

    def _restore_failed(self, gpu: GpuRuntime, now_s: float, problem: str) -> None:
        plan = self.unrestored.setdefault(gpu.index, RetryPlan())
        plan.failed(now_s, problem)
        gpu.state = GpuState.RESTORE_FAILED
        gpu.message = (
            f"restore not verified after {plan.attempts} attempts ({problem}); "
            f"retrying in {plan.next_s - now_s:.1f} s"
        )
        self.error("restore", f"GPU {gpu.index}: {gpu.message}")

    def _restored(self, gpu: GpuRuntime, how: str) -> None:
        """A pending restore verified: the GPU takes the state its release asked for."""
        self.unrestored.pop(gpu.index, None)
        state, why = self._after_restore.pop(gpu.index, (GpuState.RELEASED, "released"))
        gpu.state = state
        gpu.message = f"{why}; restored to defaults {how}"
        self._dirty = True  # a released GPU may be governed again

    def _retry_restores(self, now_s: float) -> None:
        for index, plan in list(self.unrestored.items()):
            if not plan.due(now_s):
                continue
            gpu = self.gpus[index]
            problem = self.backend.restore(index)
            if problem is not None:
                self._restore_failed(gpu, now_s, problem)
                continue
            self._restored(gpu, f"after {plan.attempts + 1} attempts")
            log.warning("GPU %d: %s", index, gpu.message)
        if not self.unrestored and self.policy is None:
            self.releasing_policy = ""

    def _refresh_stages(self) -> None:
        """Rebuild each GPU's stage observations from the latest scrapes and hints."""
        self._serving_dirty = False
        index = StageIndex(
            self._selected(),
            self.serving,
            self.serving_engines,
            self.hints.hint,
            self.max_input_age_s,
        )
        for gpu in self.gpus.values():
            gpu.stages = index.for_gpu(gpu.placements)
        self._count_tokens()

    def _count_tokens(self) -> None:
        """Attribute new generation tokens of every pod to its GPUs' report windows."""
        gpus_of: dict[tuple[str, str], list[GpuRuntime]] = {}
        for gpu in self.gpus.values():
            for placement in gpu.placements:
                gpus_of.setdefault(placement.pod.key, []).append(gpu)
        for key, snap in self.serving.items():
            total = snap.generation_tokens_total
            seen = self._tokens_seen.get(key)
            self._tokens_seen[key] = total
            # A counter that went down means the engine restarted; count from zero.
            delta = total if seen is None or total < seen else total - seen
            if seen is None or delta <= 0 or key not in gpus_of:
                continue
            share = delta / len(gpus_of[key])
            for gpu in gpus_of[key]:
                gpu.window.tokens += share

    # ---- shutdown and safety ------------------------------------------------------------
    def shutdown(self, reason: str = "agent stopping") -> list[int]:
        """Restore every GPU to defaults (SIGTERM/SIGINT, end of a standalone run).

        Retries restores that do not verify, with backoff, for up to `shutdown_retry_s`;
        returns the indices still not restored (they stay in the state file, so the next
        agent on this node restores them at start-up).
        """
        with self.lock:
            if self.policy is not None:
                self.releasing_policy = self.policy.name
            for gpu in self.gpus.values():
                if gpu.governed or gpu.locked:
                    self._release(gpu, GpuState.RELEASED, reason)
            self.policy = None
        return self.restore_all(reason)

    def restore_all(self, reason: str) -> list[int]:
        """Reset every GPU this agent may hold, read back, and retry until verified.

        Retries stop after `shutdown_retry_s`; returns the indices still not at defaults.
        """
        plan = RetryPlan(first_s=0.1, max_s=2.0)
        waited_s = 0.0
        failed = self._restore_held(reason)
        while failed and waited_s < self.shutdown_retry_s:
            plan.failed(0.0, "")
            delay_s = min(plan.next_s, self.shutdown_retry_s - waited_s)
            self._sleep(delay_s)
            waited_s += delay_s
            failed = self._restore_held(reason)
        if failed:
            log.error(
                "GPUs %s are still not at defaults after %s; the state file keeps them for the "
                "next agent", sorted(failed), reason,
            )  # fmt: skip
        return sorted(failed)

    def _restore_held(self, reason: str) -> list[int]:
        failed: list[int] = []
        for uuid, entry in self.state_file.held().items():
            index = entry.get("index")
            if not isinstance(index, int) or index < 0:
                continue
            problem = self.backend.restore(index)
            gpu = self.gpus.get(index)
            if problem is None:
                if gpu is not None and index in self.unrestored:
                    self._restored(gpu, f"on {reason}")
                continue
            failed.append(index)
            self.error("restore", f"GPU {index} ({uuid}): restore on {reason}: {problem}")
            if gpu is not None:
                self._restore_failed(gpu, self.last_tick_s or 0.0, problem)
        return failed

    def on_watchdog(self, silent_s: float) -> None:
        """Called from the watchdog thread: the tick is stuck, so restore without the lock.

        Records stay in the state file: the stuck tick may still apply a lock it recorded,
        and a record goes only when a restore on the tick thread verifies.
        """
        self.errors["watchdog"] += 1
        log.error(
            "control tick stalled for %.1f s: restoring default clocks on every GPU", silent_s
        )
        for uuid, entry in self.state_file.held().items():
            index = entry.get("index")
            if isinstance(index, int) and index >= 0:
                problem = restore_gpu(self.backend.inner, index)
                if problem is not None:
                    self.error("restore", f"GPU {index} ({uuid}): watchdog restore: {problem}")
        # The loops still believe their locks are applied: rebuild them when ticks resume.
        self._rebuild_loops = True


def _identity(backend: GpuBackend, index: int) -> GpuIdentity:
    """The GPU's identity; a blank UUID when it does not answer (it must not stop the rest)."""
    try:
        return backend.identity(index)
    except GpuError as exc:
        log.error("GPU %d: cannot read its identity: %s", index, exc)
        return GpuIdentity(index, "", "", "")


def _dcgm_pods(snapshot: DcgmSnapshot) -> set[tuple[str, str, str, str, str]]:
    """Every (GPU, MIG instance or "", namespace, pod, container) the scrape names."""
    return {
        (g.uuid or g.gpu, instance_id, *p)
        for g in snapshot.gpus.values()
        for instance_id, pods in [
            ("", g.pods),
            *((i.instance_id, i.pods) for i in g.instances.values()),
        ]
        for p in pods
    }
