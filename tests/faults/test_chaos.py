"""Seeded random chaos: kills, restarts, NVML errors (the device count too), a read-only state
directory, clock resets that do nothing, MIG switches, policy changes and label removals, in
any order, against one node's fake GPUs.

Invariants (checked by `FaultNode.check` after every step, and at the end): no GPU and no
node is ever reported Released while the hardware still holds a lock or a changed power
limit; after the final shutdown and one more restart with the faults gone, every GPU is at
its defaults. Step counts are bounded (`max_examples` x `stateful_step_count`) so the run
stays well under a minute; `derandomize` makes it the same run every time.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pynvml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from .fakenvml import FakeDriver
from .harness import POWERCAP, STATIC, FaultNode, left_locked, policy, survived, tried

ERRORS = {
    "Timeout": pynvml.NVML_ERROR_TIMEOUT,
    "Unknown": pynvml.NVML_ERROR_UNKNOWN,
    "GPU lost": pynvml.NVML_ERROR_GPU_IS_LOST,
}
CALLS = (
    "nvmlDeviceResetGpuLockedClocks",
    "nvmlDeviceSetGpuLockedClocks",
    "nvmlDeviceSetPowerManagementLimit",
    "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetFieldValues",
    "nvmlDeviceGetCount",
)
POLICIES = {
    "StaticClock": STATIC,
    "PowerCap": POWERCAP,
    "StaticClock at 1 MHz": policy("low", strategy="StaticClock", staticClock={"smClockMHz": 1}),
    "Observe": policy(
        "observe", mode="Observe", strategy="StaticClock", staticClock={"smClockMHz": 900}
    ),
}


class ChaosNode(RuleBasedStateMachine):
    """One node; each rule is a fault or an operator action."""

    def __init__(self) -> None:
        super().__init__()
        self._dir = tempfile.TemporaryDirectory(prefix="triserve-chaos-")
        self.driver = FakeDriver(count=3)
        self.node = FaultNode(self.driver, Path(self._dir.name))
        self._patch = self.node.patched()
        self._patch.__enter__()
        self.faults: list[str] = []
        self.node.start(STATIC)

    def _tried(self, name: str) -> None:
        tried(name)
        self.faults.append(name)

    @property
    def running(self) -> bool:
        return self.node.agent is not None

    @precondition(lambda self: self.running)
    @rule(ticks=st.integers(1, 40))
    def tick(self, ticks: int) -> None:
        self.node.tick(ticks)

    @precondition(lambda self: self.running)
    @rule()
    def kill(self) -> None:
        self._tried("SIGKILL")
        self.node.kill()

    @precondition(lambda self: self.running)
    @rule()
    def sigterm(self) -> None:
        self._tried("SIGTERM")
        self.node.stop()

    @precondition(lambda self: not self.running)
    @rule(name=st.sampled_from(sorted(POLICIES)))
    def restart(self, name: str) -> None:
        self._tried("restart")
        self.node.start(POLICIES[name])

    @precondition(lambda self: self.running)
    @rule(name=st.sampled_from(sorted(POLICIES)))
    def policy_change(self, name: str) -> None:
        self._tried("policy change")
        self.node.set_policy(POLICIES[name])

    @precondition(lambda self: self.running)
    @rule()
    def label_removed(self) -> None:
        self._tried("node label removed")
        self.node.set_policy(None)

    @rule(
        error=st.sampled_from(sorted(ERRORS)),
        call=st.sampled_from(CALLS),
        times=st.integers(1, 30),
        gpu=st.sampled_from([None, 0, 1, 2]),
    )
    def nvml_error(self, error: str, call: str, times: int, gpu: int | None) -> None:
        self._tried(f"NVML {error} on {call.removeprefix('nvmlDevice')}")
        self.driver.fail(call, ERRORS[error], times=times, gpu=gpu)

    @rule(gpu=st.integers(0, 2))
    def gpu_lost(self, gpu: int) -> None:
        self._tried("GPU lost (every call)")
        self.driver.lose(gpu)

    @rule(gpu=st.integers(0, 2))
    def gpu_back(self, gpu: int) -> None:
        self.driver.recover(gpu)

    @rule(gpu=st.integers(0, 2), times=st.integers(1, 20))
    def power_set_ignored(self, gpu: int, times: int) -> None:
        self._tried("power-limit set silently ignored")
        self.driver.ignore_power_sets(gpu, times)

    @rule(gpu=st.integers(0, 2), times=st.integers(1, 20))
    def clock_reset_ignored(self, gpu: int, times: int) -> None:
        self._tried("clock reset silently ignored")
        self.driver.ignore_clock_resets(gpu, times)

    @rule(gpu=st.integers(0, 2), enabled=st.booleans())
    def mig_switched(self, gpu: int, enabled: bool) -> None:
        if enabled:
            self._tried("GPU switched to MIG mode")
        self.driver.set_mig(gpu, enabled)

    @rule(value=st.booleans())
    def read_only_state_dir(self, value: bool) -> None:
        if value:
            self._tried("read-only state directory")
        self.node.read_only(value)

    @precondition(lambda self: self.running)
    @rule()
    def watchdog(self) -> None:
        self._tried("watchdog trip")
        assert self.node.agent is not None
        self.node.agent.on_watchdog(10.0)

    @invariant()
    def reports_never_lie(self) -> None:
        if self.running:
            self.node.check()

    def teardown(self) -> None:
        try:
            if self.running:
                self.node.stop()
            self.driver.clear()
            self.node.read_only(False)
            self.node.start(None)  # the final restart restores what the file lists
            self.node.tick(5)
            if self.driver.locked():
                for name in self.faults:
                    left_locked(name)
            assert self.driver.locked() == [], f"left locked after {self.faults}"
            self.node.stop()
            assert self.driver.locked() == []
            for name in self.faults:
                survived(name)
        finally:
            self._patch.__exit__(None, None, None)
            self._dir.cleanup()


ChaosNode.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=40,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_chaos = ChaosNode.TestCase
