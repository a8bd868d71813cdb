"""Waiting for a condition in a test: every loop has a deadline and a pause."""

import asyncio
import inspect
import time
from collections.abc import Callable


def poll(
    condition: Callable[[], object],
    timeout_s: float = 60,
    every_s: float = 0.1,
    what: str | Callable[[], str] = "it",
) -> object:
    """Call `condition` every `every_s` until it returns something true, and return that; fail
    the test after `timeout_s`, saying `what` (or what `what()` says then: the last state seen)."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what() if callable(what) else what} did not happen within {timeout_s:g} s")
        time.sleep(every_s)
    return value


async def apoll(
    condition: Callable[[], object], timeout_s: float = 30, every_s: float = 0.01, what: str = "it"
) -> object:
    """`poll` in a running event loop; `condition` may return an awaitable."""

    async def check() -> object:
        value = condition()
        return await value if inspect.isawaitable(value) else value

    deadline = time.monotonic() + timeout_s
    while not (value := await check()):
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s:g} s"
        await asyncio.sleep(every_s)
    return value
