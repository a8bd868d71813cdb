"""From an HTTP request body to a queued job, and following that job to its end: what
`POST /predict` and `POST /v1/videos` share."""

import hashlib
import secrets
from collections.abc import AsyncIterator

from fastapi import Request

from serve_app.api.dependencies import IngressState
from serve_app.api.errors import InvalidRequest, Refused, UnsupportedMediaType
from serve_app.api.images import ImageLoader
from serve_app.api.loras import resolve_loras
from serve_app.api.models import apply_model
from serve_app.api.parsing import parse_form_video_request, parse_video_request, read_body
from serve_app.api.protocol import VideoRequest
from serve_app.config import SECRET_ENV, webhook_secrets
from serve_app.handles import Handle, JobsDeployment
from serve_app.messages import (
    DEFAULT_NEGATIVE_PROMPT,
    AppliedLora,
    GenerationRequest,
    Job,
    LoraChoice,
    Refusal,
    Submission,
    VideoDetails,
)

IDEMPOTENCY_HEADER = "Idempotency-Key"
JSON, FORM = "application/json", "multipart/form-data"


async def submit_job(request: Request, state: IngressState, owner: str, media_types: tuple[str, ...] = (JSON,)) -> Job:
    """Read and validate the body, prepare the image, queue the job (honouring Idempotency-Key):
    one of the key's submissions in flight on this replica, refused past its cap before any work.
    A body of another type than `media_types` (what the route declares) is a 415, unread."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type not in media_types:
        raise UnsupportedMediaType(f"Send the body as {' or '.join(media_types)}, with that Content-Type.")
    with state.submissions.holding(owner):
        return await _submit(request, state, owner, media_type)


async def _submit(request: Request, state: IngressState, owner: str, media_type: str) -> Job:
    # The body is read here, after the auth dependency: an unauthenticated caller gets 401
    # whatever it sent, and nothing is read, parsed or fetched for it.
    body = await read_body(request, int(state.args.max_body_mb * 2**20))
    requested = None
    if media_type == FORM:
        video_request, requested = await parse_form_video_request(request.headers, body)
    else:
        video_request = await parse_video_request(body)
    video_request = apply_model(video_request, state.args.served_models)
    _check_fits(video_request, state.args.max_video_pixels)
    loras = await resolve_loras(video_request.loras, state.args, state.outbound)
    idempotency_key = _idempotency_key(request)
    # Refused before any image is fetched or decoded: a refused request leaves no trace.
    if refusal := await state.jobs.call(
        JobsDeployment.admit, owner, idempotency_key, video_request.shape, video_request.model
    ):
        raise Refused(refusal)
    if video_request.webhook_url is not None:
        if not webhook_secrets():
            raise InvalidRequest(
                f"Webhooks are not enabled on this server (its operator sets {SECRET_ENV}).", param="webhook_url"
            )
        await state.outbound.check(video_request.webhook_url, "webhook_url")
    # An uploaded input_reference travels as image_base64; errors about it name what was sent.
    image_param = "input_reference" if requested and "input_reference" in requested else "image_base64"
    generation = await resolve(video_request, state.images, image_param, loras)
    details = VideoDetails(
        **generation.model_dump(exclude={"image_png", "loras"}),
        loras=[AppliedLora(path=lora.path, scale=lora.scale, sha256=lora.source.sha256) for lora in loras],
        mode=video_request.mode,
        image_url=video_request.image_url,
        requested=requested or None,
    )
    submission = Submission(
        owner=owner,
        request=generation,
        details=details,
        idempotency_key=idempotency_key,
        request_hash=hashlib.sha256(video_request.model_dump_json().encode()).hexdigest(),
        webhook_url=video_request.webhook_url,
    )
    job = await state.jobs.call(JobsDeployment.submit, submission)
    if isinstance(job, Refusal):
        raise Refused(job)
    return job


async def resolve(
    video_request: VideoRequest,
    images: ImageLoader,
    image_param: str = "image_base64",
    loras: tuple[LoraChoice, ...] = (),
) -> GenerationRequest:
    """Fill in what the request left open (seed, negative prompt) and prepare its image; its model
    and sampling are already resolved (`apply_model`), its adapters' sources too (`resolve_loras`)."""
    return GenerationRequest(
        **video_request.model_dump(
            exclude={"image_url", "image_base64", "webhook_url", "seed", "negative_prompt", "loras"}
        ),
        loras=loras,
        negative_prompt=(
            DEFAULT_NEGATIVE_PROMPT if video_request.negative_prompt is None else video_request.negative_prompt
        ),
        seed=video_request.seed if video_request.seed is not None else secrets.randbelow(2**32),
        image_png=await images.load(video_request, image_param),
    )


async def follow_job(jobs: Handle[JobsDeployment], owner: str, job: Job, idle_s: float) -> AsyncIterator[Job | None]:
    """Yield the job each time it changes, None after `idle_s` without a change; stop once it has
    finished (or was deleted)."""
    while not job.finished:
        latest = await jobs.call(JobsDeployment.watch, owner, job.id, job, idle_s)
        if latest is None:
            return
        if latest == job:
            yield None
            continue
        job = latest
        yield job


def _check_fits(video_request: VideoRequest, max_video_pixels: int | None) -> None:
    pixels = video_request.width * video_request.height * video_request.num_frames
    if max_video_pixels is not None and pixels > max_video_pixels:
        raise InvalidRequest(
            f"{video_request.width}x{video_request.height} with {video_request.num_frames} frames is "
            f"{pixels:,} pixels, over this server's limit of {max_video_pixels:,} (what its GPUs can hold). "
            "Use a smaller size or fewer frames."
        )


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not (0 < len(key) <= 255 and key.isprintable()):
        raise InvalidRequest(f"{IDEMPOTENCY_HEADER} must be 1 to 255 printable characters.", param=IDEMPOTENCY_HEADER)
    return key
