"""HTTP routes of the jobs API, `/v1/videos`, modelled on the OpenAI videos API: submit, then
poll or follow events, then download."""

from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from serve_app.api.auth import require_api_key
from serve_app.api.dependencies import Owner, State
from serve_app.api.downloads import file_response
from serve_app.api.errors import InvalidRequest, NotFound, ServiceError
from serve_app.api.protocol import VIDEO_REQUEST_BODY, ErrorResponse, JobDeleted, error_responses
from serve_app.api.resources import Video, VideoList
from serve_app.api.submission import FORM, JSON, follow_job, submit_job
from serve_app.common.storage import THUMBNAIL, VIDEO
from serve_app.error_codes import ErrorCode
from serve_app.handles import JobsDeployment
from serve_app.messages import Job, JobStatus

_ERRORS = error_responses(
    {
        400: "Invalid payload or parameter: the field is named in error.param",
        401: "Missing or wrong API key",
        404: "No such job for this API key",
    }
)
# What the OpenAI SDK's videos.create sends; any field of the JSON body may be added as a form field.
_OPENAI_FORM = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        "prompt": {"type": "string"},
        "model": {"type": "string", "description": "A served model's id (GET /v1/models); omitted: the default."},
        "seconds": {"type": "string", "description": "Mapped to the nearest 4n+1 frame count at fps."},
        "size": {"type": "string", "example": "1280x704", "description": "Mapped to the nearest multiples of 32."},
        "input_reference": {"type": "string", "format": "binary", "description": "The first frame."},
    },
    "additionalProperties": True,
}
_CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            **VIDEO_REQUEST_BODY["requestBody"]["content"],
            "multipart/form-data": {"schema": _OPENAI_FORM},
        },
    }
}
_VARIANTS = {"video": (VIDEO, "video/mp4"), "thumbnail": (THUMBNAIL, "image/jpeg")}

videos_router = APIRouter(prefix="/v1/videos", dependencies=[Depends(require_api_key)], responses=_ERRORS)


@videos_router.post(
    "",
    status_code=202,
    response_model=Video,
    openapi_extra=_CREATE_BODY,
    responses={
        409: {"model": ErrorResponse, "description": "Idempotency-Key reused with another body"},
        415: {"model": ErrorResponse, "description": "The body is neither application/json nor multipart/form-data"},
    },
)
async def create_video(request: Request, state: State, owner: Owner) -> Video:
    """Queue a video job. The body is `/predict`'s JSON, or the multipart form of the OpenAI SDK.
    Send `Idempotency-Key` to retry safely."""
    return Video.of(await submit_job(request, state, owner, (JSON, FORM)))


@videos_router.get("", response_model=VideoList)
async def list_videos(
    state: State,
    owner: Owner,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="The last id of the previous page.")] = None,
    order: Literal["desc", "asc"] = "desc",
) -> VideoList:
    """The caller's jobs, newest first unless `order=asc`."""
    page = await state.jobs.call(JobsDeployment.page, owner, after, limit, newest_first=order == "desc")
    if page is None:
        raise InvalidRequest("after is not one of your jobs.", param="after")
    return VideoList.of(page)


@videos_router.get("/{video_id}", response_model=Video)
async def get_video(video_id: str, state: State, owner: Owner) -> Video:
    return Video.of(await _job(state, owner, video_id))


@videos_router.get(
    "/{video_id}/content",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"video/mp4": {}, "image/jpeg": {}}, "description": "The video, or its first frame"},
        409: {"model": ErrorResponse, "description": "The job has not completed"},
    },
)
async def get_video_content(
    video_id: str, request: Request, state: State, owner: Owner, variant: Literal["video", "thumbnail"] = "video"
) -> StreamingResponse:
    """The MP4 (`Range` requests work), or with `variant=thumbnail` the first frame as a JPEG. One
    of the key's streams on this replica while it is sent (429 past its cap): a slow reader holds
    its download, and Serve's proxy what it was sent, so neither may add up without bound."""
    job = await _job(state, owner, video_id)
    if job.status != JobStatus.COMPLETED:
        raise ServiceError(
            f"The job is {job.status}: its video exists once it has completed.", code=ErrorCode.VIDEO_NOT_READY
        )
    name, media_type = _VARIANTS[variant]
    give_back = state.streams.take(owner)
    try:
        response = await file_response(state.storage, job.id, name, media_type, request.headers.get("range"))
    except BaseException:
        give_back()
        raise
    response.background = BackgroundTask(give_back)  # once the body is sent, or the client has gone
    return response


@videos_router.get("/{video_id}/events", response_class=StreamingResponse)
async def get_video_events(video_id: str, state: State, owner: Owner) -> StreamingResponse:
    """Server-Sent Events: the job object at every change, until it has finished; keep-alive
    comments in between. One of the key's streams on this replica while it lasts (429 past its cap)."""
    job = await _job(state, owner, video_id)
    give_back = state.streams.take(owner)

    async def events() -> AsyncIterator[str]:
        try:
            yield _event(job)
            async for update in follow_job(state.jobs, owner, job, state.args.sse_keepalive_s):
                yield ": keep-alive\n\n" if update is None else _event(update)
        finally:
            give_back()

    # Given back by the stream's end, or after the response if the stream never started.
    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=BackgroundTask(give_back),
    )


@videos_router.post("/{video_id}/cancel", response_model=Video)
async def cancel_video(video_id: str, state: State, owner: Owner) -> Video:
    """A queued job never runs; a running one stops at its next denoising step. A finished job is
    returned as it is."""
    job = await state.jobs.call(JobsDeployment.cancel, owner, video_id)
    if job is None:
        raise _not_found(video_id)
    return Video.of(job)


@videos_router.delete("/{video_id}", response_model=JobDeleted)
async def delete_video(video_id: str, state: State, owner: Owner) -> JobDeleted:
    """Cancel the job if it has not finished, then delete it and its files."""
    if not await state.jobs.call(JobsDeployment.delete, owner, video_id):
        raise _not_found(video_id)
    return JobDeleted(id=video_id)


async def _job(state: State, owner: str, video_id: str) -> Job:
    job = await state.jobs.call(JobsDeployment.get, owner, video_id)
    if job is None:
        raise _not_found(video_id)
    return job


def _not_found(video_id: str) -> NotFound:
    # The same answer for a job of another key: ids are not confirmed to anyone else.
    return NotFound(f"No video job {video_id!r}.", param="video_id")


def _event(job: Job) -> str:
    return f"data: {Video.of(job).model_dump_json()}\n\n"
