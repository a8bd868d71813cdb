"""Health and status: `/healthz` and `/readyz` for probes and load balancers (open, and saying
nothing about the deployment but whether it serves), `/v1/status` for operators (with a key)."""

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from serve_app.api.auth import require_api_key
from serve_app.api.dependencies import State
from serve_app.api.errors import error_body
from serve_app.api.protocol import ErrorResponse

health_router = APIRouter()
status_router = APIRouter(dependencies=[Depends(require_api_key)])


@health_router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The ingress is up."""
    return {"status": "ok"}


@health_router.get("/readyz", responses={503: {"model": ErrorResponse}})
async def readyz(state: State) -> Any:
    """At least one generator replica has its model loaded, and how many."""
    replicas = await state.running_generators()
    if replicas:
        return {"status": "ready", "generator_replicas": replicas}
    return JSONResponse(
        error_body("not_ready", "No generator replica has its model loaded yet."),
        status_code=503,
        headers={"Retry-After": "10"},
    )


@status_router.get("/v1/status")
async def status(state: State) -> dict[str, Any]:
    """The model served, the generator replicas running, and how each that ran a job runs the
    model (device, dtype, memory plan, attention backend, compilation; the simulator says so)."""
    return {
        "model": state.args.default_model.id,
        "models": [spec.id for spec in state.args.served_models],
        "generator_replicas": await state.running_generators(),
        "generators": await state.jobs.generators.remote(),
    }
