"""Every way the review found to leave a GPU locked, as a row that must restore the GPU.

Each test drives real `NodeAgent`s over the real `NvmlBackend` against the stateful fake
driver (tests/faults/fakenvml.py); `FaultNode.check` fails any test in which a report says
Released (or Degraded) while the hardware still holds a lock or a changed power limit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pynvml
import pytest

from triserve import cli
from triserve.api.status import GpuState, ReportPhase
from triserve.node_agent.safety import GuardRails, StateFile, StateFileBusyError

from .fakenvml import POWER_DEFAULT_MW, FakeDriver
from .harness import POWERCAP, STATIC, FaultNode, on_disk, policy, survived, tried

EXAMPLE = Path(__file__).parents[2] / "examples" / "energypolicy-full.yaml"

TIMEOUT = pynvml.NVML_ERROR_TIMEOUT
UNKNOWN = pynvml.NVML_ERROR_UNKNOWN
RESET_CLOCKS = "nvmlDeviceResetGpuLockedClocks"


def locked_everywhere(node: FaultNode) -> None:
    node.start(STATIC)
    node.tick(3)
    assert node.driver.locked() == [0, 1]


def test_reset_timeout_is_retried_and_never_reported_released(
    node: FaultNode, driver: FakeDriver
) -> None:
    tried("reset Timeout (0.5 s) on policy removal")
    locked_everywhere(node)
    driver.fail(RESET_CLOCKS, TIMEOUT, times=10)  # 10 calls: about 0.5 s of retries
    node.set_policy(None)
    report = node.check()
    assert report.phase is ReportPhase.RESTORE_FAILED
    assert report.policy == "static"  # the operator keeps waiting on this node
    assert {g.state for g in report.gpus} == {GpuState.RESTORE_FAILED}
    report = node.tick(800)  # 40 s of ticks: backoff retries until the resets go through
    assert driver.locked() == []
    assert report.phase is ReportPhase.RELEASED and report.policy == ""
    assert on_disk(node) == {"everything": False}
    survived("reset Timeout (0.5 s) on policy removal")


def test_silently_ignored_power_reset_is_caught_by_the_read_back(
    node: FaultNode, driver: FakeDriver
) -> None:
    tried("power-limit reset silently ignored")
    node.start(POWERCAP)
    node.tick(3)
    assert driver.gpus[0].power_limit_mw == 400_000
    driver.ignore_power_sets(0)
    node.set_policy(None)
    report = node.check()
    assert report.gpus[0].state is GpuState.RESTORE_FAILED and "400 W" in report.gpus[0].message
    assert report.gpus[1].state is GpuState.RELEASED
    condition = next(c for c in report.conditions if c.type == "RestoreFailed")
    assert condition.status == "True" and "GPU 0" in condition.message
    driver.clear()
    node.tick(200)
    assert driver.gpus[0].power_limit_mw == POWER_DEFAULT_MW
    assert node.check().phase is ReportPhase.RELEASED
    survived("power-limit reset silently ignored")


def test_degraded_gpu_still_gets_restore_attempts(node: FaultNode, driver: FakeDriver) -> None:
    tried("GPU lost while locked (Degraded)")
    locked_everywhere(node)
    driver.lose(1)
    node.tick(5)  # three failed ticks degrade it; its restore cannot verify while lost
    assert node.check().gpus[1].state is GpuState.RESTORE_FAILED
    assert node.agent is not None and node.agent.gpus[0].governed
    driver.recover(1)
    node.tick(200)
    assert driver.gpus[1].locked is None  # restored, and left alone for this process
    assert node.check().gpus[1].state is GpuState.DEGRADED
    assert driver.gpus[0].locked is not None  # the healthy GPU stayed under control
    survived("GPU lost while locked (Degraded)")


def test_state_file_write_error_does_not_abort_release_or_shutdown(
    node: FaultNode, driver: FakeDriver
) -> None:
    tried("read-only state directory")
    locked_everywhere(node)
    node.read_only(True)
    node.set_policy(None)  # must not raise
    assert driver.locked() == []
    report = node.check()
    assert report.phase is ReportPhase.DEGRADED
    writable = next(c for c in report.conditions if c.type == "StateFileWritable")
    assert writable.status == "False" and "Read-only" in writable.message
    node.set_policy(STATIC)
    node.tick(5)
    assert driver.locked() == []  # a lock the file cannot record is never applied
    assert node.stop() == []  # must not raise
    assert node.agent is None and node.agent is None
    survived("read-only state directory")


@pytest.mark.parametrize(
    "content",
    [
        "null",
        "[]",
        '{"gpus": ["GPU-x"]}',
        '{"gpus": {"GPU-x": 3}}',
        '{"gpus": {"a": "b"}}',
        "42",
        '"text"',
        "",
        "{not json",
        "\x00\xff",
    ],
    ids=[
        "null",
        "list",
        "gpus-list",
        "entry-number",
        "entry-string",
        "number",
        "string",
        "empty",
        "garbage",
        "binary",
    ],
)
def test_any_unreadable_state_file_restores_every_gpu(
    node: FaultNode, driver: FakeDriver, content: str
) -> None:
    tried("unreadable state file at start-up")
    locked_everywhere(node)
    node.kill()
    node.state_path.write_bytes(content.encode("latin-1"))
    node.start(None)
    assert driver.locked() == []
    survived("unreadable state file at start-up")


def test_failed_start_up_reset_keeps_the_record_and_retries(
    node: FaultNode, driver: FakeDriver
) -> None:
    tried("reset Unknown error at start-up")
    locked_everywhere(node)
    node.kill()
    driver.fail(RESET_CLOCKS, UNKNOWN, times=3, gpu=0)
    node.start(None)
    assert driver.locked() == [0]
    assert driver.gpus[0].uuid in on_disk(node)  # not cleared: a crash now still restores
    assert node.check().phase is ReportPhase.RESTORE_FAILED
    node.tick(200)
    assert driver.locked() == [] and on_disk(node) == {"everything": False}
    survived("reset Unknown error at start-up")


def test_lost_gpu_at_start_up_does_not_stop_the_others(node: FaultNode, driver: FakeDriver) -> None:
    tried("GPU lost at start-up")
    locked_everywhere(node)
    node.kill()
    driver.lose(0)
    node.start(None)
    assert driver.locked() == [0]  # GPU 1 restored although GPU 0 does not answer
    assert node.check().gpus[0].state is GpuState.RESTORE_FAILED
    driver.recover(0)
    node.tick(200)
    assert driver.locked() == []
    survived("GPU lost at start-up")


def test_watchdog_keeps_the_record_of_a_lock_the_stuck_tick_may_still_apply(
    node: FaultNode, driver: FakeDriver
) -> None:
    tried("watchdog restore while a lock call is stuck")
    locked_everywhere(node)
    assert node.agent is not None
    node.agent.on_watchdog(10.0)
    assert driver.locked() == []
    assert driver.gpus[0].uuid in on_disk(node)  # the record outlives the watchdog reset
    driver.gpus[0].locked = (900, 900)  # the stuck NVML call completes after the reset
    node.kill()
    node.start(None)
    assert driver.locked() == []
    survived("watchdog restore while a lock call is stuck")


def test_second_agent_on_the_node_refuses_to_start(node: FaultNode) -> None:
    tried("second agent on one state file")
    node.start(STATIC)
    with pytest.raises(StateFileBusyError, match=r"another triserve agent.*only one agent"):
        StateFile(node.state_path).acquire()
    node.stop()
    StateFile(node.state_path).acquire()  # free again once the first one stopped
    survived("second agent on one state file")


def test_sigkill_then_restart_restores(node: FaultNode, driver: FakeDriver) -> None:
    tried("SIGKILL while locked")
    node.start(POWERCAP)
    node.tick(3)
    node.set_policy(STATIC)
    node.tick(3)
    assert driver.locked() == [0, 1]
    entries = json.loads(node.state_path.read_text())["gpus"]
    assert set(entries) == {g.uuid for g in driver.gpus}
    node.kill()
    node.start(None)
    assert driver.locked() == []
    survived("SIGKILL while locked")


def test_shutdown_retries_until_the_reset_goes_through(node: FaultNode, driver: FakeDriver) -> None:
    tried("reset Timeout during SIGTERM")
    locked_everywhere(node)
    driver.fail(RESET_CLOCKS, TIMEOUT, times=4)
    assert node.stop() == []
    assert driver.locked() == []
    survived("reset Timeout during SIGTERM")


def test_shutdown_that_cannot_restore_leaves_the_record_for_the_next_agent(
    node: FaultNode, driver: FakeDriver
) -> None:
    tried("GPU lost during SIGTERM")
    locked_everywhere(node)
    driver.lose(1)
    assert node.stop() == [1]
    assert driver.gpus[1].uuid in on_disk(node)
    driver.recover(1)
    node.start(None)
    assert driver.locked() == []
    survived("GPU lost during SIGTERM")


def test_guard_rails_clamp_a_policy_that_pins_the_minimum(
    driver: FakeDriver, tmp_path: Path
) -> None:
    node = FaultNode(
        driver,
        tmp_path,
        rails=GuardRails(min_sm_clock_fraction=0.5, min_power_limit_fraction=0.5),
    )
    with node.patched():
        node.start(policy("pin", strategy="StaticClock", staticClock={"smClockMHz": 1}))
        node.tick(3)
        assert all(g.locked is not None and g.locked[1] >= 990 for g in driver.gpus)
        clamped = next(c for c in node.check().conditions if c.type == "GuardRailClamped")
        assert clamped.status == "True" and "guard-rail floor 990 MHz" in clamped.message
        node.set_policy(policy("starve", strategy="PowerCap", powerCap={"watts": 1}))
        node.tick(3)
        assert [g.power_limit_mw for g in driver.gpus] == [350_000, 350_000]
        node.stop()
    assert driver.locked() == []


def test_second_agent_cli_exits_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = StateFile(tmp_path / "state.json")
    state.acquire()  # the first agent
    code = cli.main(
        ["agent", "--standalone", "--policy", str(EXAMPLE), "--sim", "reference", "--duration", "1",
         "--state-file", str(tmp_path / "state.json"), "--metrics-port", "0"]
    )  # fmt: skip
    assert code == 2
    assert "locked by another triserve agent" in capsys.readouterr().err
    state.release()
