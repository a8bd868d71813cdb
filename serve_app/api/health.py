"""Health and status: `/healthz` and `/readyz` for probes and load balancers (open, and saying
nothing about the deployment but whether it serves), `/v1/status` for operators (with a key)."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from fastapi import APIRouter, Depends, Request

from serve_app.api.auth import require_api_key
from serve_app.api.dependencies import State
from serve_app.api.errors import error_response
from serve_app.api.protocol import ErrorResponse
from serve_app.error_codes import ErrorCode
from serve_app.handles import JobsDeployment

health_router = APIRouter()
status_router = APIRouter(dependencies=[Depends(require_api_key)])
# `/readyz` is open to anyone and asks the Serve controller: at most one question in this long.
READY_CACHE_S = 2.0

T = TypeVar("T")


class Cached(Generic[T]):
    """An async function's answer, kept for `ttl_s`: callers meanwhile get it, and callers while
    it is being asked share that one call. A failure is not kept."""

    def __init__(self, call: Callable[[], Awaitable[T]], ttl_s: float) -> None:
        self._call = call
        self._ttl_s = ttl_s
        self._task: asyncio.Future[T] | None = None
        self._asked_at = 0.0

    async def __call__(self) -> T:
        task = self._task
        # None asked yet, or the last answer failed or is stale.
        if task is None or (task.done() and (task.exception() is not None or self._expired())):
            self._asked_at = time.monotonic()
            self._task = task = asyncio.ensure_future(self._call())
        return await asyncio.shield(task)

    def _expired(self) -> bool:
        return time.monotonic() - self._asked_at >= self._ttl_s


@health_router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The ingress is up."""
    return {"status": "ok"}


@health_router.get("/readyz", responses={503: {"model": ErrorResponse}})
async def readyz(request: Request) -> Any:
    """At least one generator replica has its model loaded, and how many (as of 2 s ago at most)."""
    replicas = await request.app.state.readiness()
    if replicas:
        return {"status": "ready", "generator_replicas": replicas}
    return error_response(
        ErrorCode.NOT_READY, "No generator replica has its model loaded yet.", headers={"Retry-After": "10"}
    )


@status_router.get("/v1/status")
async def status(state: State) -> dict[str, Any]:
    """The model served, the generator replicas running, and how each that ran a job runs the
    model (device, dtype, memory plan, attention backend, compilation; the simulator says so)."""
    return {
        "model": state.args.default_model.id,
        "models": [spec.id for spec in state.args.served_models],
        "generator_replicas": await state.running_generators(),
        "generators": await state.jobs.call(JobsDeployment.generators),
    }
