"""HTTP routes of the ingress: `/predict` (the hosted API's synchronous call) and health."""

import base64
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from ray.serve.handle import DeploymentHandle

from serve_app.auth import require_api_key
from serve_app.config import AppArgs
from serve_app.errors import GenerationFailed, error_body, request_id_of
from serve_app.images import ImageLoader
from serve_app.schemas import (
    DEFAULT_NEGATIVE_PROMPT,
    ErrorResponse,
    GenerationRequest,
    PredictResponse,
    VideoDetails,
    VideoRequest,
)
from serve_app.validation import parse_video_request, read_body

logger = logging.getLogger(__name__)


@dataclass
class IngressState:
    """What the routes need from the ingress replica, kept on `app.state.ingress`."""

    args: AppArgs
    generator: DeploymentHandle
    images: ImageLoader
    is_ready: Callable[[], Awaitable[bool]]


def ingress_state(request: Request) -> IngressState:
    return request.app.state.ingress


State = Annotated[IngressState, Depends(ingress_state)]


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in [
        (400, "Invalid payload: the field is named in error.param"),
        (401, "Missing or wrong API key"),
        (413, "Body or image over the configured size cap"),
        (500, "Generation failed; error.request_id is in the server log"),
    ]
}
# The body is parsed by hand (after auth), so FastAPI cannot infer its schema: declare it.
_JSON_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": VideoRequest.model_json_schema()}},
    }
}

predict_router = APIRouter(dependencies=[Depends(require_api_key)], responses=_ERRORS)
health_router = APIRouter()


@predict_router.post("/predict", response_model=PredictResponse, openapi_extra=_JSON_BODY)
async def predict(request: Request, state: State) -> PredictResponse:
    """Generate a video and return it base64-encoded, as the hosted API did."""
    # The body is read here, after the auth dependency: an unauthenticated caller gets 401
    # whatever it sent, and nothing is read, parsed or fetched for it.
    video_request = parse_video_request(await read_body(request, int(state.args.max_body_mb * 2**20)))
    generation = await resolve(video_request, state.images)
    try:
        result = await state.generator.generate.remote(generation)
    except Exception as exc:
        request_id = request_id_of(request)
        logger.error("request %s: generation failed", request_id, exc_info=exc)
        raise GenerationFailed(f"Generation failed (request id {request_id}); retry later.") from None
    details = VideoDetails(
        **generation.model_dump(exclude={"image_png"}),
        mode=video_request.mode,
        image_url=video_request.image_url,
        model=result.model,
        timings=result.timings,
    )
    return PredictResponse(video_base64=base64.b64encode(result.video_mp4).decode("ascii"), details=details)


async def resolve(video_request: VideoRequest, images: ImageLoader) -> GenerationRequest:
    """Fill in what the request left open (seed, negative prompt) and prepare its image."""
    return GenerationRequest(
        **video_request.model_dump(exclude={"image_url", "image_base64", "seed", "negative_prompt"}),
        negative_prompt=(
            DEFAULT_NEGATIVE_PROMPT if video_request.negative_prompt is None else video_request.negative_prompt
        ),
        seed=video_request.seed if video_request.seed is not None else secrets.randbelow(2**32),
        image_png=await images.load(video_request),
    )


@health_router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The ingress is up."""
    return {"status": "ok"}


@health_router.get("/readyz", responses={503: {"model": ErrorResponse}})
async def readyz(state: State) -> Any:
    """At least one generator replica has its model loaded."""
    if await state.is_ready():
        return {"status": "ready", "model": state.args.model}
    return JSONResponse(
        error_body("not_ready", "No generator replica has its model loaded yet."),
        status_code=503,
        headers={"Retry-After": "10"},
    )
