"""Hostile tenants, odd hardware and long uptime: each way found to lose control, as a row.

Start-up faults (a GPU absent from enumeration, a read-only state directory, NVML not
answering the device count, a state file that is a trap) and uptime faults (a clock reset
that returns success and does nothing, a GPU switched to MIG mid-run). Each drives real
`NodeAgent`s over the real `NvmlBackend` against the stateful fake driver; the read-only
directory and the device-count error also run the real `triserve agent` command.
`FaultNode.check` fails any step in which a report says Released (or Degraded) while the
hardware still holds a lock or a changed power limit.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
import threading
import tracemalloc
from pathlib import Path
from typing import Any
from unittest import mock

import pynvml
import pytest

from triserve import cli
from triserve.api.status import GpuState, ReportPhase
from triserve.gpu import nvml as nvml_mod

from .fakenvml import SUPPORTED_MHZ, FakeDriver
from .harness import STATIC, FaultNode, on_disk, survived, tried

EXAMPLE = Path(__file__).parents[2] / "examples" / "energypolicy-full.yaml"
LOCK = (SUPPORTED_MHZ[0], 900)


def locked_everywhere(node: FaultNode) -> None:
    node.start(STATIC)
    node.tick(3)
    assert node.driver.locked() == [0, 1]


def left_locked_by_a_killed_agent(driver: FakeDriver, state_path: Path) -> None:
    """What a SIGKILLed agent leaves: both GPUs locked, both recorded."""
    for gpu in driver.gpus:
        gpu.locked = LOCK
    state_path.parent.mkdir(parents=True, exist_ok=True)
    entries = {g.uuid: {"index": g.index, "clocks": True, "power": True} for g in driver.gpus}
    state_path.write_text(json.dumps({"version": 1, "gpus": entries}))


def run_agent(driver: FakeDriver, state_path: Path, duration_s: float) -> int:
    """`triserve agent --standalone` over the fake driver for `duration_s` wall seconds."""
    with mock.patch.object(nvml_mod, "pynvml", driver.module()):
        return cli.main(
            ["agent", "--standalone", "--policy", str(EXAMPLE), "--duration", str(duration_s),
             "--state-file", str(state_path), "--metrics-port", "0", "--metrics-host", "127.0.0.1"]
        )  # fmt: skip


# ---- 1. a GPU absent at start-up ------------------------------------------------------


def test_gpu_absent_at_start_up_keeps_its_record_and_is_restored_when_it_returns(
    node: FaultNode, driver: FakeDriver
) -> None:
    tried("GPU absent from enumeration at start-up")
    locked_everywhere(node)
    node.kill()
    driver.hide(1)
    node.start(None)  # the report must not say Released: GPU 1 is still locked
    report = node.check()
    assert report.phase is ReportPhase.RESTORE_FAILED
    condition = next(c for c in report.conditions if c.type == "RestoreFailed")
    assert driver.gpus[1].uuid in condition.message and "not on this node" in condition.message
    assert driver.gpus[1].uuid in on_disk(node)  # the record survives this agent
    driver.show(1)
    node.tick(200)  # 10 s: the agent sees the GPU enumerate again and restores it
    assert driver.locked() == []
    assert node.check().phase is ReportPhase.RELEASED
    assert on_disk(node) == {"everything": False}
    survived("GPU absent from enumeration at start-up")


def test_gpu_absent_at_start_up_that_shifts_the_indices_is_restored_by_the_next_agent(
    node: FaultNode, driver: FakeDriver
) -> None:
    tried("GPU absent at start-up, later GPUs renumbered")
    locked_everywhere(node)
    node.kill()
    driver.hide(0)  # GPU 1 now answers as index 0
    node.start(None)
    assert driver.locked() == [0]  # the GPU that answered was restored
    assert node.check().phase is ReportPhase.RESTORE_FAILED
    assert driver.gpus[0].uuid in on_disk(node)
    node.stop()
    driver.show(0)
    node.start(None)
    assert driver.locked() == []
    assert node.check().phase is ReportPhase.RELEASED
    survived("GPU absent at start-up, later GPUs renumbered")


# ---- 2. a read-only state directory ------------------------------------------------------


def test_read_only_state_directory_still_restores_at_start_up(
    driver: FakeDriver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried("read-only state directory at start-up")
    state_path = tmp_path / "state" / "state.json"
    left_locked_by_a_killed_agent(driver, state_path)
    for name in ("mkstemp", "NamedTemporaryFile"):  # every way a file is made in the directory
        real = getattr(tempfile, name)

        def read_only(*args: Any, _real: Any = real, **kw: Any) -> Any:
            if Path(str(kw.get("dir", ""))) == state_path.parent:
                raise OSError(errno.EROFS, "Read-only file system", str(state_path.parent))
            return _real(*args, **kw)

        monkeypatch.setattr(tempfile, name, read_only)
    code = run_agent(driver, state_path, 0.5)
    assert driver.locked() == []  # restored although the file could not be rewritten
    assert code == 0
    assert driver.gpus[0].uuid in json.loads(state_path.read_text())["gpus"]  # untouched
    survived("read-only state directory at start-up")


# ---- 3. NVML does not answer the device count ---------------------------------------------


def test_device_count_error_at_start_is_retried_and_reported_degraded(
    node: FaultNode, driver: FakeDriver
) -> None:
    tried("NVML error on the device count at start-up")
    locked_everywhere(node)
    node.kill()
    driver.fail("nvmlDeviceGetCount", pynvml.NVML_ERROR_UNKNOWN, times=3)
    node.start(None)  # must not raise
    report = node.check()
    assert report.phase is ReportPhase.DEGRADED
    assert driver.locked() == [0, 1]  # nothing can be restored before NVML answers
    node.tick(100)  # 5 s: retries with backoff until the count answers
    assert driver.locked() == []
    assert node.check().phase is ReportPhase.RELEASED
    survived("NVML error on the device count at start-up")


def test_device_count_error_does_not_crash_the_agent_command(
    driver: FakeDriver, tmp_path: Path
) -> None:
    tried("NVML error on the device count (triserve agent)")
    state_path = tmp_path / "state.json"
    left_locked_by_a_killed_agent(driver, state_path)
    driver.fail("nvmlDeviceGetCount", pynvml.NVML_ERROR_UNKNOWN, times=1)
    code = run_agent(driver, state_path, 1.5)
    assert driver.locked() == []
    assert code == 0
    survived("NVML error on the device count (triserve agent)")


# ---- 4. a state file that is a trap -------------------------------------------------------


def _deep(path: Path) -> None:
    path.write_text("[" * 200_000 + "]" * 200_000)


def _fifo(path: Path) -> None:
    fifo = path.with_name("fifo")
    os.mkfifo(fifo)
    path.symlink_to(fifo)


def _dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _huge(path: Path) -> None:
    with path.open("wb") as handle:
        handle.truncate(300 * 1024 * 1024)  # sparse: 300 MB to read, nothing on disk


@pytest.mark.parametrize(
    "make", [_deep, _fifo, _dev_zero, _huge], ids=["deep-nesting", "fifo", "dev-zero", "300MB"]
)
def test_state_file_trap_restores_every_gpu_without_hanging_or_eating_memory(
    node: FaultNode, driver: FakeDriver, make: Any
) -> None:
    name = f"state file trap at start-up ({make.__name__.strip('_')})"
    tried(name)
    locked_everywhere(node)
    node.kill()
    node.state_path.unlink()
    make(node.state_path)
    failure: list[BaseException] = []

    def start() -> None:
        try:
            node.start(None)
        except BaseException as exc:
            failure.append(exc)

    tracemalloc.start()
    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    thread.join(10.0)
    _size, peak_b = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hung = thread.is_alive()
    if hung and make is _fifo:  # let the stuck reader go
        os.close(os.open(node.state_path.with_name("fifo"), os.O_WRONLY | os.O_NONBLOCK))
    assert not hung, "start-up hung reading the state file"
    assert not failure, f"start-up raised {failure[0]!r}"
    assert peak_b < 32 * 1024 * 1024, f"start-up allocated {peak_b / 2**20:.0f} MiB"
    assert driver.locked() == []
    survived(name)


# ---- 5. a reset that returns success and does nothing ---------------------------------


def test_clock_reset_that_does_nothing_is_never_reported_released(
    node: FaultNode, driver: FakeDriver
) -> None:
    tried("clock reset returns success, lock stays")
    locked_everywhere(node)
    driver.ignore_clock_resets(0)
    node.set_policy(None)
    report = node.check()
    assert report.gpus[0].state is GpuState.RESTORE_FAILED
    assert "under load" in report.gpus[0].message
    assert report.gpus[1].state is GpuState.RELEASED
    driver.clear()
    node.tick(200)
    assert driver.locked() == [] and node.check().phase is ReportPhase.RELEASED
    survived("clock reset returns success, lock stays")


def test_clock_reset_on_an_idle_gpu_is_unverified_until_the_gpu_is_busy(
    node: FaultNode, driver: FakeDriver
) -> None:
    tried("clock reset on an idle GPU (unverifiable)")
    locked_everywhere(node)
    driver.gpus[0].busy = False  # idle: locked or not, it reads its lowest clock
    node.set_policy(None)
    gpu0 = node.check().gpus[0]
    assert gpu0.state is GpuState.RESTORE_FAILED and "unverified" in gpu0.message
    driver.gpus[0].busy = True  # under load the clock shows the lock is gone
    node.tick(200)
    assert node.check().gpus[0].state is GpuState.RELEASED
    survived("clock reset on an idle GPU (unverifiable)")


def test_clock_event_reason_of_a_clock_setting_keeps_the_gpu_restore_failed(
    node: FaultNode, driver: FakeDriver
) -> None:
    tried("clock event reasons still report a clock setting")
    locked_everywhere(node)
    driver.gpus[1].extra_reasons = pynvml.nvmlClocksEventReasonApplicationsClocksSetting
    node.set_policy(None)
    gpu1 = node.check().gpus[1]
    assert gpu1.state is GpuState.RESTORE_FAILED and "0x2" in gpu1.message
    driver.gpus[1].extra_reasons = 0
    node.tick(200)
    assert node.check().phase is ReportPhase.RELEASED
    survived("clock event reasons still report a clock setting")


# ---- 6. MIG mode switched mid-run ---------------------------------------------------------


def test_gpu_switched_to_mig_mid_run_is_released_to_observed(
    node: FaultNode, driver: FakeDriver
) -> None:
    tried("GPU switched to MIG mode mid-run")
    locked_everywhere(node)
    driver.set_mig(0, True)
    report = node.tick(200)  # 10 s of ticks: the MIG mode is re-read every few seconds
    assert driver.gpus[0].locked is None
    assert report.gpus[0].state is GpuState.OBSERVED and "MIG" in report.gpus[0].message
    assert driver.gpus[1].locked is not None  # the other GPU stays governed
    survived("GPU switched to MIG mode mid-run")
