"""The served models on the API side: `GET /v1/models`, and a request's model with its steps,
guidance and shift checked against that model's recipe, and filled in from it when omitted."""

import time
from typing import Any

from fastapi import APIRouter, Depends

from serve_app.api.auth import require_api_key
from serve_app.api.dependencies import State
from serve_app.api.errors import InvalidRequest
from serve_app.api.protocol import VideoRequest, error_responses
from serve_app.config import ModelSpec
from serve_app.limits import MAX_GUIDANCE, MIN_GUIDANCE

models_router = APIRouter(
    dependencies=[Depends(require_api_key)], responses=error_responses({401: "Missing or wrong API key"})
)
# OpenAI's `created`: here, when this Ingress replica started serving the models.
_SERVING_SINCE = int(time.time())
_DEFAULT_SIZE = (VideoRequest.model_fields["width"].default, VideoRequest.model_fields["height"].default)


@models_router.get("/v1/models")
async def list_models(state: State) -> dict[str, Any]:
    """The served models, the default first, in OpenAI's list shape, each with its defaults (at
    the default size, 1280x704) and limits."""
    return {"object": "list", "data": [describe(spec) for spec in state.args.served_models]}


def describe(spec: ModelSpec) -> dict[str, Any]:
    recipe = spec.recipe
    hub_owner = spec.checkpoint.split("/")[0] if spec.checkpoint.count("/") == 1 else "local"
    return {
        "id": spec.id,
        "object": "model",
        "created": _SERVING_SINCE,
        "owned_by": hub_owner,
        "scheduler": recipe.scheduler,
        "defaults": {
            "num_inference_steps": recipe.default_steps,
            "guidance_scale": recipe.default_guidance,
            "shift": recipe.shift_for(*_DEFAULT_SIZE),
        },
        "limits": {
            "num_inference_steps": {"min": recipe.min_steps, "max": recipe.max_steps},
            "guidance_scale": {"min": MIN_GUIDANCE, "max": MAX_GUIDANCE if recipe.guidance else MIN_GUIDANCE},
        },
        # Whether a request may choose its own shift, and whether the default follows the size.
        "shift": "fixed" if recipe.fixed_timesteps else ("by_size" if recipe.shift is None else "adjustable"),
        "speed_modes": ["quality"] if recipe.fixed_timesteps else ["quality", "fast"],
    }


def apply_model(video_request: VideoRequest, served: list[ModelSpec]) -> VideoRequest:
    """The request with its model, steps, guidance and shift resolved by the model's recipe; a
    400 naming the field (and the model's range) for what the model cannot do."""
    spec = _find(video_request.model, served)
    recipe = spec.recipe
    steps = recipe.default_steps if video_request.num_inference_steps is None else video_request.num_inference_steps
    if not recipe.min_steps <= steps <= recipe.max_steps:
        allowed = f"{recipe.min_steps} to {recipe.max_steps}"
        raise InvalidRequest(
            f"num_inference_steps={steps} is outside the range of {spec.id}: {allowed}.", param="num_inference_steps"
        )
    guidance = recipe.default_guidance if video_request.guidance_scale is None else video_request.guidance_scale
    if not recipe.guidance and guidance != 1.0:
        raise InvalidRequest(
            f"guidance_scale={guidance:g}: {spec.id} is distilled to run without guidance, its range is 1.0 to 1.0; "
            "omit guidance_scale.",
            param="guidance_scale",
        )
    if recipe.fixed_timesteps and video_request.shift is not None:
        raise InvalidRequest(
            f"shift: {spec.id} samples at the fixed timesteps {recipe.timesteps} it was distilled for; omit shift.",
            param="shift",
        )
    if recipe.fixed_timesteps and video_request.speed_mode == "fast":
        raise InvalidRequest(
            f"speed_mode fast: {spec.id} makes a video in {steps} steps, each from a different timestep, so the "
            "step cache has nothing to reuse; it is already the fast model. Omit speed_mode.",
            param="speed_mode",
        )
    shift = video_request.shift
    if shift is None:
        shift = recipe.shift_for(video_request.width, video_request.height)
    update = {"model": spec.id, "num_inference_steps": steps, "guidance_scale": guidance, "shift": shift}
    return video_request.model_copy(update=update)


def _find(model: str | None, served: list[ModelSpec]) -> ModelSpec:
    if model is None:
        return served[0]
    for spec in served:
        if spec.id == model:
            return spec
    names = ", ".join(spec.id for spec in served)
    raise InvalidRequest(f"Unknown model {model!r}. This server serves: {names} (see GET /v1/models).", param="model")
