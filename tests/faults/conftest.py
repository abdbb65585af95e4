"""Fixtures of the fault-injection suite and its closing table of faults tried and survived.

The table is printed in pytest's terminal summary (so it shows in `make test` output, also
with -q) whenever a test of this directory ran. With ``TRISERVE_FAULTS_TABLE=PATH`` it is
also written to PATH as Markdown (`tools/reliability_table.py`, for docs/restore.md).
"""

from __future__ import annotations

import os
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


def _rows() -> list[tuple[str, int, int, int]]:
    """(fault, tried, survived, left locked) by fault name, then the totals."""
    rows = [(name, c[0], c[1], c[2]) for name, c in sorted(FAULTS.items())]
    tried = sum(r[1] for r in rows)
    survived = sum(r[2] for r in rows)
    left = sum(r[3] for r in rows)
    return [*rows, ("total", tried, survived, left)]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the faults tried and survived (only when fault tests ran)."""
    if not FAULTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("faults tried and survived")
    width = max(len(name) for name in FAULTS)
    write(f"{'fault':<{width}}  {'tried':>6}  {'survived':>8}  {'left locked':>11}")
    for name, n_tried, n_survived, n_left in _rows():
        write(f"{name:<{width}}  {n_tried:>6}  {n_survived:>8}  {n_left:>11}")
    markdown = os.environ.get("TRISERVE_FAULTS_TABLE")
    if markdown:
        lines = ["| fault | tried | survived | left locked |", "|---|---:|---:|---:|"]
        lines += [f"| {n} | {t} | {s} | {left} |" for n, t, s, left in _rows()]
        Path(markdown).write_text("\n".join(lines) + "\n")
