"""`POST /predict`: the hosted API's synchronous call, riding the jobs machinery."""

import asyncio
import base64
import contextvars
import logging

from fastapi import APIRouter, Depends, Request
from ray.serve.exceptions import RequestCancelledError

from serve_app.api.auth import require_api_key
from serve_app.api.dependencies import Owner, State
from serve_app.api.errors import ServiceError, request_id_of
from serve_app.api.protocol import VIDEO_REQUEST_BODY, PredictResponse, error_responses
from serve_app.api.submission import follow_job, submit_job
from serve_app.common.storage import VIDEO
from serve_app.common.tasks import spawn
from serve_app.error_codes import ErrorCode
from serve_app.handles import JobsDeployment
from serve_app.messages import JobStatus

logger = logging.getLogger(__name__)


_ERRORS = error_responses(
    {
        400: "Invalid payload: the field is named in error.param",
        401: "Missing or wrong API key",
        409: "The job was cancelled (by a cancel or delete call) before it completed",
        413: "Body or image over the configured size cap",
        415: "The body is not application/json",
        500: "Generation failed; error.request_id is in the server log",
    }
)

predict_router = APIRouter(dependencies=[Depends(require_api_key)], responses=_ERRORS)


@predict_router.post("/predict", response_model=PredictResponse, openapi_extra=VIDEO_REQUEST_BODY)
async def predict(request: Request, state: State, owner: Owner) -> PredictResponse:
    """Generate a video and return it base64-encoded, as the hosted API did. It runs as a job like
    any other (listed in `/v1/videos`); a client that disconnects cancels it."""
    job = await submit_job(request, state, owner)
    try:
        with state.streams.holding(owner):  # a long poll until the video is made
            async for update in follow_job(state.jobs, owner, job, idle_s=60):
                job = update or job
    except (asyncio.CancelledError, RequestCancelledError):
        # The client went away: free the GPU rather than make a video nobody will receive.
        logger.info("request %s: client disconnected, cancelling job %s", request_id_of(request), job.id)
        _cancel_detached(state, owner, job.id)
        raise
    if job.status == JobStatus.COMPLETED:
        video = await asyncio.to_thread(state.storage.read, job.id, VIDEO)
        return PredictResponse(video_base64=base64.b64encode(video).decode("ascii"), details=job.details)
    if job.status == JobStatus.FAILED and job.error is not None:
        if job.error.code.http_status < 500:  # the request's to change, like a refusal at submission
            raise ServiceError(job.error.message, code=job.error.code, param=job.error.param)
        request_id = request_id_of(request)
        logger.error("request %s: job %s failed: %s", request_id, job.id, job.error.message)
        raise ServiceError(f"{job.error.message} (request id {request_id}, job id {job.id})", code=job.error.code)
    raise ServiceError(
        f"Job {job.id} was {job.status if job.finished else 'deleted'} before it completed.",
        code=ErrorCode.CANCELLED,
    )


def _cancel_detached(state: State, owner: str, job_id: str) -> None:
    """Cancel a job from outside the current request: Serve cancels a cancelled request's calls,
    even those it starts while it unwinds, so the call runs in a task of its own, in an empty
    context (no parent request), that nothing cancels."""

    async def cancel() -> None:
        await state.jobs.call(JobsDeployment.cancel, owner, job_id)

    spawn(cancel(), context=contextvars.Context())
