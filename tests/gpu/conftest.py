"""Opt-in switch for tests/gpu: they change a real GPU's clocks and power limits.

Without `--with-gpu` every test here is skipped with the reason, so `make test` on a machine
that happens to have a GPU never reconfigures it. With the flag, the `nvml` fixture still
skips (naming NVML's own error) where no driver or GPU is present.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the GPU tests unless `--with-gpu` was given."""
    if config.getoption("--with-gpu"):
        return
    skip = pytest.mark.skip(
        reason="changes GPU 0's clocks and power limit: run with --with-gpu on a GPU you may "
        "reconfigure (root or CAP_SYS_ADMIN)"
    )
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)
