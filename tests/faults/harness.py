"""One node under fault injection: the fake driver, a state directory and the agent on it.

`FaultNode` starts, kills (as SIGKILL would: no shutdown, the kernel drops the flock) and
stops real `NodeAgent`s over the real `NvmlBackend`, which talks to a `FakeDriver` whose GPU
state outlives each agent. After every step it checks what a user watching the
NodeEnergyReport would rely on: a GPU (or the node) reported Released or Degraded is at its
defaults on the "hardware". `FAULTS` counts the faults tried and survived for the table the
suite prints at the end (tests/faults/conftest.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

from triserve.api.models import EnergyPolicySpec
from triserve.api.status import GpuState, NodeEnergyReportStatus, ReportPhase
from triserve.control import ProbeSettings
from triserve.gpu import nvml as nvml_mod
from triserve.node_agent import safety
from triserve.node_agent.agent import NodeAgent, PolicyRef
from triserve.node_agent.podresources import ContainerGpus
from triserve.node_agent.reports import Reporter
from triserve.node_agent.safety import GuardRails, StateFile
from triserve.node_agent.stages import ServingPod

from .fakenvml import FakeDriver

#: fault name → [tried, survived, left locked]; printed as a table at the end of the session.
FAULTS: dict[str, list[int]] = {}


def tried(name: str) -> None:
    """Count one injection of fault `name`."""
    FAULTS.setdefault(name, [0, 0, 0])[0] += 1


def survived(name: str, times: int = 1) -> None:
    """Count `times` injections of `name` after which every GPU came back to defaults."""
    FAULTS.setdefault(name, [0, 0, 0])[1] += times


def left_locked(name: str) -> None:
    """Count one run with `name` after which a GPU was still locked at the end."""
    FAULTS.setdefault(name, [0, 0, 0])[2] += 1


def policy(name: str = "p1", **spec: Any) -> PolicyRef:
    """A policy from camelCase spec fields."""
    return PolicyRef(name, EnergyPolicySpec.model_validate(spec), 1)


STATIC = policy("static", strategy="StaticClock", staticClock={"smClockMHz": 900})
POWERCAP = policy("powercap", strategy="PowerCap", powerCap={"watts": 400})


class InvariantError(AssertionError):
    """A report told a user something the hardware contradicts."""


class FaultNode:
    """A node whose GPUs are `driver`'s, running at most one agent at a time."""

    def __init__(self, driver: FakeDriver, state_dir: Path, rails: GuardRails | None = None):
        self.driver = driver
        self.state_path = state_dir / "state.json"
        self.rails = rails
        self.agent: NodeAgent | None = None
        self.now_s = 0.0
        self.reports: list[NodeEnergyReportStatus] = []
        self._read_only = False
        self.pods = [
            ServingPod("serving", f"stage-{g.index}", f"stage{g.index}") for g in driver.gpus
        ]
        self.resources = [
            ContainerGpus("serving", f"stage-{g.index}", "engine", "nvidia.com/gpu", (g.uuid,))
            for g in driver.gpus
        ]

    @contextlib.contextmanager
    def patched(self) -> Iterator[FaultNode]:
        """NvmlBackend talks to the fake driver; state writes fail while read-only."""

        def mkstemp(**kw: Any) -> tuple[int, str]:
            if self._read_only:
                raise OSError(errno.EROFS, "Read-only file system", str(self.state_path.parent))
            return tempfile.mkstemp(**kw)

        with (
            mock.patch.object(nvml_mod, "pynvml", self.driver.module()),
            mock.patch.object(safety, "tempfile", SimpleNamespace(mkstemp=mkstemp)),
        ):
            yield self

    def read_only(self, value: bool) -> None:
        """Make the state directory (un)writable."""
        self._read_only = value

    # ---- agent lifecycle ----------------------------------------------------------------
    def start(self, p: PolicyRef | None = None) -> NodeAgent:
        """A fresh agent process: lock the state file, restore, follow `p`."""
        assert self.agent is None, "one agent per node"
        state = StateFile(self.state_path)
        state.acquire()
        agent = NodeAgent(
            nvml_mod.NvmlBackend(),
            "node-a",
            state,
            rails=self.rails,
            probe=ProbeSettings(interval_s=0),  # the strategies decide from the first tick
            shutdown_retry_s=2.0,
            sleep=lambda _s: None,
        )
        self.agent = agent
        self.reporter = Reporter(agent)
        agent.startup()
        self.check()
        agent.set_pods(self.pods)
        agent.set_pod_resources(self.resources)
        self.set_policy(p)
        return agent

    def set_policy(self, p: PolicyRef | None) -> None:
        """The node's policy label changed (None: removed)."""
        assert self.agent is not None
        self.agent.set_policy(p)
        self.check()

    def tick(self, n: int = 1, dt_s: float = 0.05) -> NodeEnergyReportStatus:
        """`n` control ticks, checking the report after each; the last report."""
        assert self.agent is not None
        for _ in range(n):
            self.now_s += dt_s
            self.agent.tick(self.now_s)
            self.check()
        return self.reports[-1]

    def kill(self) -> None:
        """SIGKILL: no shutdown; the kernel releases the flock."""
        assert self.agent is not None
        self.agent.state_file.release()
        self.agent = None

    def stop(self) -> list[int]:
        """SIGTERM: restore everything; the GPUs it could not restore."""
        assert self.agent is not None
        failed = self.agent.shutdown("SIGTERM")
        self.check()
        self.agent.state_file.release()
        self.agent = None
        return failed

    # ---- what a user relies on ----------------------------------------------------------
    def check(self) -> NodeEnergyReportStatus:
        """Build the report a user would read and hold it against the hardware."""
        assert self.agent is not None
        status = self.reporter.build(dt.datetime.now(dt.UTC))
        self.reports.append(status)
        at_defaults = {g.index: g.at_defaults for g in self.driver.gpus}
        by_uuid = {g.uuid: g for g in self.driver.gpus}
        for gpu in status.gpus:
            # By UUID: a GPU absent from enumeration moves the later ones down one index.
            hw = by_uuid.get(gpu.uuid) or self.driver.gpus[gpu.index]
            if gpu.state in (GpuState.RELEASED, GpuState.DEGRADED) and not hw.at_defaults:
                raise InvariantError(
                    f"GPU {gpu.index} reported {gpu.state.value} while locked "
                    f"{hw.locked} at {hw.power_limit_mw} mW"
                )
        if status.phase is ReportPhase.RELEASED and not all(at_defaults.values()):
            raise InvariantError(f"node reported Released with GPUs {self.driver.locked()} locked")
        return status


def on_disk(node: FaultNode) -> dict[str, Any]:
    """The state file's entries as the next agent would read them."""
    stale = StateFile(node.state_path).load()
    return {"everything": stale.everything, **stale.entries}
