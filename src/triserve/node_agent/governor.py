"""Which GPUs a policy governs, and how: start each GPU's control loop or hand the GPU back.

`Governor.apply` takes the pod-to-GPU mapping of the pods the policy selects and decides,
per GPU: no policy, no serving pod or an opted-out pod → release (restored, read back,
`triserve.node_agent.releases`); a GPU in MIG mode → observed unless the policy may govern it
(`NodeInputs.mig_reason`); otherwise a `ControlLoop` built by the loop factory from the
policy's settings (`actuate` off in Observe mode). A policy that cannot run on a GPU is an
error naming the policy, and the GPU stays at its defaults.

Owned by `triserve.node_agent.agent.NodeAgent`, which calls it under its lock.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from triserve.api.models import EnergyPolicySpec, PolicyMode
from triserve.api.status import GpuState
from triserve.control import ControlLoop, ControlSettings
from triserve.gpu.backend import GpuBackend, GpuError
from triserve.node_agent.errors import ErrorCounts, ErrorKind
from triserve.node_agent.gpumap import Placement
from triserve.node_agent.gpus import GpuRuntime
from triserve.node_agent.inputs import NodeInputs
from triserve.node_agent.releases import Releases
from triserve.node_agent.stages import ServingPod

log = logging.getLogger("triserve.node_agent.agent")

#: Builds one GPU's control loop: (backend, GPU index, the policy's settings) -> loop.
LoopFactory = Callable[[GpuBackend, int, ControlSettings], ControlLoop]


def policy_loop(backend: GpuBackend, index: int, settings: ControlSettings) -> ControlLoop:
    """The production loop: the strategy the policy's settings name."""
    return ControlLoop(backend, index, None, settings)


@dataclass(frozen=True, slots=True)
class PolicyRef:
    """The policy the node follows: its name, generation and validated spec."""

    name: str
    spec: EnergyPolicySpec
    generation: int = 0


class Governor:
    """Starts and stops the control loops of one node's GPUs."""

    def __init__(
        self,
        backend: GpuBackend,
        releases: Releases,
        errors: ErrorCounts,
        loop_factory: LoopFactory | None = None,
    ) -> None:
        """Loops act through `backend` (the agent's guarded backend)."""
        self.backend = backend
        self.releases = releases
        self.errors = errors
        self.loop_factory: LoopFactory = loop_factory or policy_loop

    def apply(
        self,
        gpus: Mapping[int, GpuRuntime],
        policy: PolicyRef | None,
        selected: Sequence[ServingPod],
        mapping: Mapping[int, list[Placement]],
        inputs: NodeInputs,
        now_s: float,
    ) -> None:
        """Place the mapping on the GPUs; govern, observe or release each one."""
        for gpu in gpus.values():
            gpu.place(mapping.get(gpu.index, []))
            if not gpu.runs:
                continue
            opted_out = [p.pod.ref for p in gpu.placements if p.pod.opt_out]
            if policy is None or not gpu.placements or opted_out:
                why = (
                    f"opted out by {', '.join(opted_out)}"
                    if opted_out
                    else "no policy"
                    if policy is None
                    else "no serving pod left on this GPU"
                )
                if gpu.governed:
                    self.releases.release(gpu, GpuState.RELEASED, why, now_s)
                elif opted_out:
                    gpu.settle(gpu.state, why)
                continue
            mig_reason = inputs.mig_reason(gpu.identity, policy.spec.mig.mode, selected)
            if mig_reason is not None and gpu.state is GpuState.MANAGED:
                self.releases.release(gpu, GpuState.RELEASED, mig_reason, now_s)
            if not gpu.governed and gpu.runs:  # not while its restore is unverified
                self.govern(gpu, policy, observe_only=mig_reason)

    def govern(self, gpu: GpuRuntime, policy: PolicyRef, observe_only: str | None = None) -> None:
        """Start a loop on `gpu` under `policy` (`observe_only`: why it may not actuate)."""
        observe = observe_only is not None or policy.spec.mode is PolicyMode.OBSERVE
        try:
            settings = ControlSettings.from_policy(policy.spec)
            if observe:
                settings = dataclasses.replace(settings, actuate=False)
            loop = self.loop_factory(self.backend, gpu.index, settings)
        except (ValueError, GpuError) as exc:
            self.errors.count(
                ErrorKind.POLICY, f"GPU {gpu.index}: cannot apply policy {policy.name}: {exc}"
            )
            gpu.settle(gpu.state, f"policy {policy.name} cannot run here: {exc}")
            return
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
            self.errors.count(ErrorKind.POLICY, clamp)
            message = f"{message}; {clamp}"
        state = GpuState.OBSERVED if observe else GpuState.MANAGED
        gpu.attach(loop, state, f"{message}: {observe_only}" if observe_only else message)
        log.info("GPU %d: %s", gpu.index, gpu.message)

    def rebuild(self, gpus: Mapping[int, GpuRuntime], policy: PolicyRef | None) -> None:
        """After a watchdog reset: every governed GPU gets a fresh loop from the PMU default.

        The GPU's state-file record stays; it goes when a later release verifies.
        """
        for gpu in gpus.values():
            if gpu.governed and policy is not None:
                gpu.detach(gpu.state, "restored by the watchdog")
                self.govern(gpu, policy)
