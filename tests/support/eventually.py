"""Polling until a condition holds: `eventually` (async) and `eventually_sync` (blocking).

Used by the tests that watch a system settle: the in-process operator and agent tests
(tests/integration, async, on the event loop's clock so kopf's `looptime` virtual time
applies) and the real API-server tests (tests/apiserver, blocking, each check a `kubectl`
call). Both variants share one rule set, `_Poll`: a check passes by returning something
truthy, which is returned to the caller; raising AssertionError counts as "not yet" and
its message is kept for the failure; on timeout the test fails naming what it waited for
and the last assertion seen.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

__all__ = ["eventually", "eventually_sync"]

T = TypeVar("T")


class _Poll:
    """The state of one wait: its deadline and the last "not yet" assertion."""

    def __init__(self, what: str, timeout_s: float, now_s: float) -> None:
        self.what = what
        self.timeout_s = timeout_s
        self.deadline_s = now_s + timeout_s
        self.last: AssertionError | None = None

    def not_yet(self, exc: AssertionError) -> None:
        """Remember a failed assertion inside the check, for the timeout message."""
        self.last = exc

    def fail_if_expired(self, now_s: float) -> None:
        """Raise the timeout failure once `now_s` is past the deadline."""
        if now_s <= self.deadline_s:
            return
        message = f"timed out after {self.timeout_s:g}s waiting for {self.what}"
        if self.last is not None:
            message += f" (last check: {self.last})"
        raise AssertionError(message) from self.last


@overload
async def eventually(
    check: Callable[[], Awaitable[T | None]],
    what: str,
    timeout_s: float = ...,
    *,
    poll_s: float = ...,
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T | None], what: str, timeout_s: float = ..., *, poll_s: float = ...
) -> T: ...


async def eventually(
    check: Callable[[], Any],
    what: str,
    timeout_s: float = 60.0,
    *,
    poll_s: float = 0.05,
) -> Any:
    """Await until `check()` (plain or async) returns something truthy, and return it.

    Time is the running loop's clock, so a test on virtual time (looptime) waits in
    virtual seconds.
    """
    loop = asyncio.get_running_loop()
    poll = _Poll(what, timeout_s, loop.time())
    while True:
        try:
            outcome = check()
            result = await outcome if inspect.isawaitable(outcome) else outcome
        except AssertionError as exc:
            result = None
            poll.not_yet(exc)
        if result:
            return result
        poll.fail_if_expired(loop.time())
        await asyncio.sleep(poll_s)


def eventually_sync(
    check: Callable[[], T | None],
    what: str,
    timeout_s: float = 60.0,
    *,
    poll_s: float = 0.3,
) -> T:
    """Block until `check()` returns something truthy, and return it."""
    poll = _Poll(what, timeout_s, time.monotonic())
    while True:
        try:
            result = check()
        except AssertionError as exc:
            result = None
            poll.not_yet(exc)
        if result:
            return result
        poll.fail_if_expired(time.monotonic())
        time.sleep(poll_s)
