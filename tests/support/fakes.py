"""Fakes for the Jobs deployment's unit tests, where no Ray runs: a Generator deployment handle
whose replicas take a step every `step_s` and count what they were asked to run, and a Jobs
deployment started on it outside Serve. (The real generator is tested on the test cluster.)"""

import asyncio
import contextlib
from collections import Counter

from serve_app.config import AppArgs
from serve_app.jobs.deployment import Jobs
from serve_app.messages import GenerationRequest, GenerationResult, Progress, StageTimings, Started


class FakeStream:
    """One generation, as a generator replica runs it: at once, in a task of its own, whether or
    not anyone reads its messages; cancel() stops it at its next step, as Serve's cancel does."""

    def __init__(self, generator: "FakeGenerator", request: GenerationRequest) -> None:
        self._generator = generator
        self.request = request
        self.cancelled = asyncio.Event()
        self._messages: asyncio.Queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def cancel(self) -> None:
        self.cancelled.set()
        self._messages.put_nowait(asyncio.CancelledError())

    def __aiter__(self):
        return self._read()

    async def _read(self):
        while True:
            message = await self._messages.get()
            if message is None:
                return
            if isinstance(message, BaseException):
                raise message
            yield message

    async def _run(self) -> None:
        try:
            async for message in self.generate():
                self._messages.put_nowait(message)
        except Exception as exc:
            self._messages.put_nowait(exc)
        self._messages.put_nowait(None)

    async def generate(self):
        """The replica's messages: Started, a Progress every `step_s`, the result."""
        generator = self._generator
        async with generator.replicas:  # a free replica, first come first served
            if self.cancelled.is_set():
                return
            generator.started[self.request.prompt] += 1
            yield Started(worker="fake-gpu", runtime={"model": "fake"})
            for step in range(1, self.request.num_inference_steps + 1):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.cancelled.wait(), generator.step_s)
                # Read the event, not how wait_for ended: a cancel that lands while wait_for cancels
                # its timed-out wait still raises TimeoutError (and once lost the stop).
                if self.cancelled.is_set():
                    generator.stopped[self.request.prompt] += 1
                    return
                yield Progress(step=step, total=self.request.num_inference_steps)
            generator.completed[self.request.prompt] += 1
            yield GenerationResult(
                video_mp4=b"\x00\x00\x00\x18ftypmp42 fake video",
                thumbnail_jpeg=b"\xff\xd8 fake thumbnail",
                model="fake",
                timings=StageTimings(text_encoding_s=0, denoising_s=0, decoding_s=0, encoding_s=0),
            )


class FakeGenerator:
    """Stands in for `DeploymentHandle`: `options(stream=True).generate.remote(request)`."""

    def __init__(self, replicas: int = 1, step_s: float = 0.02, stream: type[FakeStream] = FakeStream) -> None:
        self.replicas = asyncio.Semaphore(replicas)
        self._stream = stream
        self.step_s = step_s
        self.started: Counter[str] = Counter()  # by prompt
        self.completed: Counter[str] = Counter()
        self.stopped: Counter[str] = Counter()
        self.generate = self

    def options(self, **_) -> "FakeGenerator":
        return self

    def remote(self, request: GenerationRequest) -> FakeStream:
        return self._stream(self, request)


async def start_jobs(generator: FakeGenerator, args: AppArgs) -> Jobs:
    """A Jobs deployment's replica, constructed as Serve does (its constructor is async)."""
    jobs = Jobs.__new__(Jobs)
    await jobs.__init__({spec.id: generator for spec in args.served_models}, args)
    return jobs
