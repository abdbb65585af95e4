"""Fixtures for the operator integration tests: an emulated cluster and fast settings.

The tests run on looptime's virtual loop clock (each module carries the `looptime` mark):
the operator's timers, retry delays and shutdown waits take no real time, and the loop's
clock moves only while every task waits, so slow work cannot make a deadline pass early.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator

import pytest
from kopf._core.actions import progression

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


@pytest.fixture(autouse=True)
def kopf_clock_follows_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make kopf's handler clock (retry delays, a handler's `runtime`) the loop's clock.

    kopf reckons "now" as a base moment plus `loop.time()`, and takes the base afresh from the
    wall clock on every processing cycle (see the notes atop `kopf._core.actions.progression`).
    In production both clocks advance together and the base never moves. On the virtual clock
    it would move back each cycle by the virtual time gained, which turns every retry delay
    and the release timeout back into wall-clock time (a 0.3 s `TemporaryError` delay came
    back as dozens of wake-up patches spread over 0.3 real seconds). Fixing the base on first
    use restores the production relation. The attribute is private: if a kopf release
    renames it, `setattr` fails here rather than the tests quietly reverting to real time.
    """
    base: list[datetime.datetime] = []

    def basetime() -> datetime.datetime:
        if not base:
            loop_s = asyncio.get_running_loop().time()
            base.append(datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=loop_s))
        return base[0]

    monkeypatch.setattr(progression, "_get_basetime", basetime)
