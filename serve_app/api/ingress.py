"""The ingress deployment: authenticates and validates every request, then hands it to the jobs
deployment, which queues it for the generator. It holds no model code and imports no torch."""

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from ray import serve
from ray.serve.context import _get_serve_request_context
from ray.serve.handle import DeploymentHandle

from serve_app.api.auth import KEY_ID_SECRET_ENV, ApiKeys
from serve_app.api.dependencies import IngressState
from serve_app.api.errors import install_error_handlers
from serve_app.api.headers import add_security_headers
from serve_app.api.health import READY_CACHE_S, Cached, health_router, status_router
from serve_app.api.images import ImageLoader, ImagePolicy
from serve_app.api.models import models_router
from serve_app.api.page import page_router
from serve_app.api.predict import predict_router
from serve_app.api.slots import stream_slots, submission_slots
from serve_app.api.videos import videos_router
from serve_app.api.webhook_keys import webhook_keys_router
from serve_app.common.logs import use_serve_log_handlers
from serve_app.common.metrics import RequestMetrics
from serve_app.common.outbound import OutboundPolicy
from serve_app.common.storage import ResultStorage
from serve_app.config import AppArgs
from serve_app.deployments import GENERATOR, running_replicas
from serve_app.handles import Handle, JobsDeployment

logger = logging.getLogger(__name__)


class Ingress:
    """A plain class; `serve_app.app` makes it a deployment with its FastAPI app."""

    def __init__(self, jobs: DeploymentHandle[Any], args: AppArgs) -> None:
        use_serve_log_handlers()
        self._jobs = jobs
        self._args = args
        self._api_keys = load_api_keys(args)

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Called by Ray Serve on the replica, after the constructor."""
        policy = ImagePolicy(
            max_bytes=int(self._args.max_image_mb * 2**20),
            max_pixels=self._args.max_image_pixels,
            fetch_timeout_s=self._args.image_fetch_timeout_s,
        )
        outbound = OutboundPolicy(tuple(self._args.url_allowlist), tuple(self._args.url_ports))
        state = IngressState(
            args=self._args,
            jobs=Handle[JobsDeployment](self._jobs),
            images=ImageLoader(policy, outbound),
            outbound=outbound,
            storage=ResultStorage(self._args.results_location),
            running_generators=self.running_generators,
            streams=stream_slots(self._args),
            submissions=submission_slots(self._args),
        )
        return create_api(state, self._api_keys)

    async def running_generators(self) -> int:
        return await asyncio.to_thread(running_replicas, serve.get_replica_context().app_name, GENERATOR)


def load_api_keys(args: AppArgs) -> ApiKeys | None:
    """The configured keys; None when the operator explicitly disabled auth."""
    keys = ApiKeys.from_environment()
    if args.allow_unauthenticated:
        logger.warning("Authentication is disabled (allow_unauthenticated): anyone who reaches this port can use it.")
        return None
    if not len(keys):
        raise RuntimeError(
            "No API keys configured: set WAN_API_KEYS (comma-separated) or WAN_API_KEYS_FILE (one key a "
            "line), or set the app argument allow_unauthenticated: true for a private, local setup."
        )
    if not keys.has_secret:
        raise RuntimeError(
            f"Set {KEY_ID_SECRET_ENV} (a random string, the same on every node, kept like the keys): key ids in "
            "logs, metrics and the jobs database are HMACs under it, so that none can be traced back to a key."
        )
    logger.info("Accepting %d API key(s).", len(keys))
    return keys


def create_api(state: IngressState, api_keys: ApiKeys | None) -> FastAPI:
    """Assemble the FastAPI app: error shape, request ids, the routers."""
    api = FastAPI(
        title="Wan2.2 TI2V video generation",
        description="Text-to-video and text+image-to-video with Wan2.2 TI2V-5B on Ray Serve.",
        version="1.0.0",
        docs_url=None,  # served by `page`, from local assets instead of a CDN
        redoc_url=None,
    )
    api.state.ingress = state
    api.state.api_keys = api_keys
    api.state.readiness = Cached(state.running_generators, READY_CACHE_S)
    install_error_handlers(api)
    if state.args.cors_origins:
        api.add_middleware(
            CORSMiddleware,
            allow_origins=state.args.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=["Retry-After", "X-Request-ID", "Content-Range"],
            max_age=600,
        )

    metrics = RequestMetrics()

    @api.middleware("http")
    async def request_id_and_metrics(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # Ray's proxy gives every request an id, logs it and returns it as X-Request-ID: use the
        # same one in our error bodies and log lines, unless the client chose it (Ray takes a
        # request's X-Request-ID as is): then one of our own. Outside Ray (unit tests) make one.
        ray_id = _get_serve_request_context().request_id
        ours = ray_id if ray_id and "x-request-id" not in request.headers else None
        request.state.request_id = ours or uuid.uuid4().hex
        response = await call_next(request)
        add_security_headers(request, response)
        if not ray_id:
            response.headers["X-Request-ID"] = request.state.request_id
        route = request.scope.get("route")
        metrics.request(route.path if route else "unmatched", request.method, response.status_code)
        return response

    api.include_router(page_router)
    api.include_router(health_router)
    api.include_router(status_router)
    api.include_router(predict_router)
    api.include_router(videos_router)
    api.include_router(webhook_keys_router)
    api.include_router(models_router)
    return api
