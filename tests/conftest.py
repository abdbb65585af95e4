"""Shared pytest configuration. Keep this file small; fixtures belong next to their tests."""

from __future__ import annotations

import pytest


# Opt-in switches for tests that touch real infrastructure. tests/e2e/conftest.py and
# tests/gpu/conftest.py skip their tests unless the flag is given.
def pytest_addoption(parser: pytest.Parser) -> None:
    """Add `--with-e2e` and `--with-gpu`."""
    parser.addoption(
        "--with-e2e",
        action="store_true",
        default=False,
        help="run tests/e2e against the current kube context (must be a test cluster)",
    )
    parser.addoption(
        "--with-gpu",
        action="store_true",
        default=False,
        help="run tests/gpu: the GpuBackend contract on GPU 0 via NVML (changes its clocks)",
    )
