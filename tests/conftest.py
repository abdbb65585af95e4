"""Shared pytest configuration. Keep this file small; fixtures belong next to their tests."""

from __future__ import annotations

import pytest


# Owned by the operator work (tests/e2e): opt-in switch for tests against a real cluster.
# tests/e2e/conftest.py skips those tests unless this flag is given.
def pytest_addoption(parser: pytest.Parser) -> None:
    """Add `--with-e2e`."""
    parser.addoption(
        "--with-e2e",
        action="store_true",
        default=False,
        help="run tests/e2e against the current kube context (must be a test cluster)",
    )
