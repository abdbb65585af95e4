"""`eventually` and `eventually_sync`: the value a passing check returns, the failure message."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from tests.support.eventually import eventually, eventually_sync


def _ready_on_third_call() -> Callable[[], dict[str, int] | None]:
    calls = itertools.count(1)

    def check() -> dict[str, int] | None:
        n = next(calls)
        assert n > 1, f"call {n} not ready"
        return {"calls": n} if n >= 3 else None

    return check


def test_sync_returns_what_the_passing_check_returned() -> None:
    assert eventually_sync(_ready_on_third_call(), "ready", 5.0, poll_s=0.0) == {"calls": 3}


async def test_async_awaits_an_async_check_and_returns_its_value() -> None:
    check = _ready_on_third_call()

    async def async_check() -> dict[str, int] | None:
        return check()

    assert await eventually(async_check, "ready", 5.0, poll_s=0.0) == {"calls": 3}


def test_sync_timeout_names_what_it_waited_for_and_the_last_assertion() -> None:
    def never() -> None:
        raise AssertionError("phase is Pending")

    with pytest.raises(AssertionError, match=r"waiting for the pod \(last check: phase is Pending"):
        eventually_sync(never, "the pod", 0.01, poll_s=0.0)


async def test_async_timeout_names_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0.01s waiting for a label$"):
        await eventually(lambda: False, "a label", 0.01, poll_s=0.0)
