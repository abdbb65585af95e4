"""Fixtures for the operator integration tests: an emulated cluster and fast settings."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from triserve.operator.settings import OperatorSettings

from .harness import Cluster, emulated_cluster


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    """A fresh emulated API server with triserve's CRDs, on 127.0.0.1."""
    async with emulated_cluster() as running:
        yield running


@pytest.fixture
def settings() -> OperatorSettings:
    """Fast operator settings: status every 0.3 s, release timeout of 3 s."""
    return OperatorSettings(status_interval_s=0.3, release_timeout_s=3.0, release_poll_s=0.3)
