"""Background tasks that nothing awaits, kept until they end: the event loop holds tasks only
weakly, and would otherwise drop one mid-way."""

import asyncio
import contextvars
from collections.abc import Coroutine

_running: set[asyncio.Task] = set()


def spawn(work: Coroutine, name: str | None = None, context: contextvars.Context | None = None) -> asyncio.Task:
    task = asyncio.get_running_loop().create_task(work, name=name, context=context)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task
