"""What the ingress routes share: the replica's state and the caller's identity, as FastAPI
dependencies."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from serve_app.api.auth import require_api_key
from serve_app.api.images import ImageLoader
from serve_app.api.slots import Slots
from serve_app.common.outbound import OutboundPolicy
from serve_app.common.storage import ResultStorage
from serve_app.config import AppArgs
from serve_app.handles import Handle, JobsDeployment


@dataclass
class IngressState:
    """What the routes need from the ingress replica, kept on `app.state.ingress`."""

    args: AppArgs
    jobs: Handle[JobsDeployment]
    images: ImageLoader
    outbound: OutboundPolicy
    storage: ResultStorage
    running_generators: Callable[[], Awaitable[int]]
    streams: Slots  # event streams and long polls (a waiting /predict)
    submissions: Slots  # submissions in flight


def ingress_state(request: Request) -> IngressState:
    state: IngressState = request.app.state.ingress
    return state


State = Annotated[IngressState, Depends(ingress_state)]
# The caller's API key id: jobs belong to it.
Owner = Annotated[str, Depends(require_api_key)]
