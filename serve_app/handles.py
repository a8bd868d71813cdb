"""The calls between the deployments, typed: what each deployment offers its callers, as a Protocol,
and `Handle`, a Serve deployment handle that calls a method of that Protocol.

A Serve handle takes any method name and any arguments (`handle.anything.remote(...)`) and answers
Any. Through `Handle` the method is named by the Protocol itself (`JobsDeployment.get`), so mypy
checks its name, its arguments and the type of its answer; `serve_app.app` has mypy check that each
deployment's class implements its Protocol.
"""

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar

from ray.serve.handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator

from serve_app.messages import (
    GenerationFailure,
    GenerationRequest,
    GenerationResult,
    Job,
    JobPage,
    Progress,
    Refusal,
    Started,
    Submission,
    VideoShape,
)

GenerationEvent = Started | Progress | GenerationResult | GenerationFailure


class GeneratorDeployment(Protocol):
    """The Generator deployment (`engine.generator.Generator`), as the Jobs deployment calls it."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]: ...


class JobsDeployment(Protocol):
    """The Jobs deployment (`jobs.deployment.Jobs`, which says what each method does), as the
    Ingress calls it."""

    async def admit(
        self, owner: str, idempotency_key: str | None = None, shape: VideoShape | None = None, model: str | None = None
    ) -> Refusal | None: ...

    async def submit(self, submission: Submission) -> Job | Refusal: ...

    async def get(self, owner: str, job_id: str) -> Job | None: ...

    async def page(
        self, owner: str, after: str | None = None, limit: int = 20, newest_first: bool = True
    ) -> JobPage | None: ...

    async def watch(self, owner: str, job_id: str, seen: Job | None, timeout_s: float) -> Job | None: ...

    async def cancel(self, owner: str, job_id: str) -> Job | None: ...

    async def delete(self, owner: str, job_id: str) -> bool: ...

    async def generators(self) -> dict[str, dict[str, object]]: ...


D = TypeVar("D")  # the Protocol of the deployment called
P = ParamSpec("P")
R = TypeVar("R")
Y = TypeVar("Y")


class Handle(Generic[D]):
    """A deployment's handle, whose calls name a method of its Protocol `D`:
    `await jobs.call(JobsDeployment.get, owner, job_id)` is `await handle.get.remote(owner, job_id)`."""

    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self._handle = handle

    def multiplexed(self, model_id: str | None) -> "Handle[D]":
        """The handle whose calls go, where they can, to a replica that holds `model_id` (Serve's
        model multiplexing); None: to any replica."""
        return self if model_id is None else Handle(self._handle.options(multiplexed_model_id=model_id))

    def call(
        self, method: Callable[Concatenate[D, P], Coroutine[Any, Any, R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> DeploymentResponse[R]:
        """Call `method` on a replica; await the response for its answer."""
        response: DeploymentResponse[R] = getattr(self._handle, method.__name__).remote(*args, **kwargs)
        return response

    def stream(
        self, method: Callable[Concatenate[D, P], AsyncIterator[Y]], /, *args: P.args, **kwargs: P.kwargs
    ) -> DeploymentResponseGenerator[Y]:
        """Call the generator `method` on a replica; iterate the response for what it yields, as it
        yields it (`options(stream=True)`)."""
        stream: DeploymentResponseGenerator[Y] = getattr(self._handle.options(stream=True), method.__name__).remote(
            *args, **kwargs
        )
        return stream
