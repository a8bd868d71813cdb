"""HTTP routes of the ingress: `/predict` (the hosted API's synchronous call) and health."""

import asyncio
import base64
import contextvars
import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from ray.serve.exceptions import RequestCancelledError

from serve_app.auth import require_api_key
from serve_app.dependencies import Owner, State
from serve_app.errors import Conflict, GenerationFailed, error_body, request_id_of
from serve_app.schemas import VIDEO_REQUEST_BODY, ErrorResponse, PredictResponse, error_responses
from serve_app.simulator import L40_FIXED_S, L40_STEP_S, SIMULATED
from serve_app.storage import VIDEO
from serve_app.submission import follow_job, submit_job

logger = logging.getLogger(__name__)


_ERRORS = error_responses(
    {
        400: "Invalid payload: the field is named in error.param",
        401: "Missing or wrong API key",
        409: "The job was cancelled (by a cancel or delete call) before it completed",
        413: "Body or image over the configured size cap",
        500: "Generation failed; error.request_id is in the server log",
    }
)

predict_router = APIRouter(dependencies=[Depends(require_api_key)], responses=_ERRORS)
health_router = APIRouter()


@predict_router.post("/predict", response_model=PredictResponse, openapi_extra=VIDEO_REQUEST_BODY)
async def predict(request: Request, state: State, owner: Owner) -> PredictResponse:
    """Generate a video and return it base64-encoded, as the hosted API did. It runs as a job like
    any other (listed in `/v1/videos`); a client that disconnects cancels it."""
    job = await submit_job(request, state, owner)
    try:
        async for update in follow_job(state.jobs, owner, job, idle_s=60):
            job = update or job
    except (asyncio.CancelledError, RequestCancelledError):
        # The client went away: free the GPU rather than make a video nobody will receive.
        logger.info("request %s: client disconnected, cancelling job %s", request_id_of(request), job.id)
        _cancel_detached(state, owner, job.id)
        raise
    if job.status == "completed":
        video = await asyncio.to_thread(state.storage.read, job.id, VIDEO)
        return PredictResponse(video_base64=base64.b64encode(video).decode("ascii"), details=job.details)
    request_id = request_id_of(request)
    if job.status == "failed":
        logger.error("request %s: job %s failed: %s", request_id, job.id, job.error.message)
        raise GenerationFailed(f"{job.error.message} (request id {request_id}, job id {job.id})", code=job.error.code)
    raise Conflict(
        f"Job {job.id} was {job.status if job.finished else 'deleted'} before it completed.", code="cancelled"
    )


_detached: set[asyncio.Task] = set()


def _cancel_detached(state: State, owner: str, job_id: str) -> None:
    """Cancel a job from outside the current request: Serve cancels a cancelled request's calls,
    even those it starts while it unwinds, so the call runs in a task of its own, in an empty
    context (no parent request), that nothing cancels."""

    async def cancel() -> None:
        await state.jobs.cancel.remote(owner, job_id)

    task = asyncio.get_running_loop().create_task(cancel(), context=contextvars.Context())
    _detached.add(task)  # the loop holds tasks weakly
    task.add_done_callback(_detached.discard)


@health_router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The ingress is up."""
    return {"status": "ok"}


@health_router.get("/readyz", responses={503: {"model": ErrorResponse}})
async def readyz(state: State) -> Any:
    """At least one generator replica has its model loaded; says how many, how those that ran a
    job run the model (attention backend, memory mode, compilation...), and whether they are the
    capacity simulator."""
    replicas = await state.running_generators()
    if replicas:
        ready = {
            "status": "ready",
            "model": state.args.model,
            "generator_replicas": replicas,
            # Reported by each replica with its first job: how it runs the model.
            "generators": await state.jobs.generators.remote(),
        }
        if state.args.model == SIMULATED:
            ready["simulator"] = {
                "time_scale": state.args.simulated_time_scale,
                "latency_model": f"L40: {L40_FIXED_S:g} s + {L40_STEP_S:g} s per step at 1280x704x121",
            }
        return ready
    return JSONResponse(
        error_body("not_ready", "No generator replica has its model loaded yet."),
        status_code=503,
        headers={"Retry-After": "10"},
    )
