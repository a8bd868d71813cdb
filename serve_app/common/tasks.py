"""Background tasks that nothing awaits, kept until they end: the event loop holds tasks only
weakly, and would otherwise drop one mid-way."""

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_running: set[asyncio.Task[Any]] = set()


def spawn(
    work: Coroutine[Any, Any, T], name: str | None = None, context: contextvars.Context | None = None
) -> asyncio.Task[T]:
    task = asyncio.get_running_loop().create_task(work, name=name, context=context)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task
