"""Fixtures of the fault-injection suite and its closing table of faults tried and survived.

The table is printed in pytest's terminal summary (so it shows in `make test` output, also
with -q) whenever a test of this directory ran.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .fakenvml import FakeDriver
from .harness import FAULTS, FaultNode


@pytest.fixture
def driver() -> FakeDriver:
    """Two fake GPUs at their defaults."""
    return FakeDriver(count=2)


@pytest.fixture
def node(driver: FakeDriver, tmp_path: Path) -> Iterator[FaultNode]:
    """A node over `driver` with NVML patched for the test's duration."""
    fault_node = FaultNode(driver, tmp_path)
    with fault_node.patched():
        yield fault_node


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the faults tried and survived (only when fault tests ran)."""
    if not FAULTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("faults tried and survived")
    width = max(len(name) for name in FAULTS)
    write(f"{'fault':<{width}}  {'tried':>6}  {'survived':>8}")
    for name, (n_tried, n_survived) in sorted(FAULTS.items()):
        write(f"{name:<{width}}  {n_tried:>6}  {n_survived:>8}")
    total_tried = sum(v[0] for v in FAULTS.values())
    total_survived = sum(v[1] for v in FAULTS.values())
    write(f"{'total':<{width}}  {total_tried:>6}  {total_survived:>8}")
