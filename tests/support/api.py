"""The Ingress's FastAPI app in-process, without Ray: the real routes, validation and error
handling, on a stand-in for the Jobs deployment's handle that records what reached it."""

import time
from pathlib import Path

from serve_app.api.auth import ApiKeys
from serve_app.api.dependencies import IngressState
from serve_app.api.images import ImageLoader, ImagePolicy
from serve_app.api.ingress import create_api
from serve_app.api.slots import stream_slots, submission_slots
from serve_app.common.outbound import OutboundPolicy
from serve_app.common.storage import ResultStorage
from serve_app.config import AppArgs
from serve_app.handles import Handle
from serve_app.messages import Job, JobPage, JobStatus, Submission
from support.service import KEY_ID_SECRET

KEY = "k"
KEY_ID = ApiKeys([KEY], KEY_ID_SECRET.encode()).identify(KEY)  # what the routes know the caller by
AUTH = {"Authorization": f"Bearer {KEY}"}


class Call:
    """One method of a deployment handle: `await handle.method.remote(...)` answers `answer(...)`."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.calls: list[tuple] = []

    async def remote(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        result = self.answer(*args, **kwargs)
        return await result if hasattr(result, "__await__") else result


class FakeJobs:
    """Queues every submission (and keeps it); answers a job as it was submitted. It runs nothing:
    a watched job comes back cancelled, so a follower (`/predict`, an event stream) ends at once."""

    def __init__(self) -> None:
        self.submitted: list[Submission] = []
        self.admit = Call(lambda *args: None)
        self.submit = Call(self._submit)
        self.get = Call(lambda owner, job_id: self._job)
        self.watch = Call(
            lambda owner, job_id, seen, timeout_s: seen.model_copy(update={"status": JobStatus.CANCELLED})
        )
        self.cancel = Call(lambda owner, job_id: self._job)
        self.delete = Call(lambda owner, job_id: self._job is not None)
        self.page = Call(self._page)
        self.generators = Call(lambda: {})
        self._job: Job | None = None

    def _submit(self, submission: Submission) -> Job:
        self.submitted.append(submission)
        details = submission.details
        self._job = Job(
            id="video_x", status="queued", created_at=int(time.time()), model="tiny", prompt=details.prompt,
            size=f"{details.width}x{details.height}", seconds="1.04", details=details,
        )  # fmt: skip
        return self._job

    def _page(self, owner: str, after: str | None, limit: int, newest_first: bool) -> JobPage | None:
        if after is not None:
            return None
        return JobPage(jobs=[self._job] if self._job else [], has_more=False)


async def one_generator() -> int:
    return 1


def api(tmp_path: Path, jobs=None, running_generators=one_generator, **args) -> tuple:
    """The app and the fake jobs handle behind it; `running_generators` answers readiness."""
    jobs = jobs or FakeJobs()
    if "models" not in args:
        args["model"] = "tiny"
    settings = AppArgs(data_dir=tmp_path, **args)
    state = IngressState(
        args=settings,
        jobs=Handle(jobs),
        images=ImageLoader(ImagePolicy(max_bytes=2**20, max_pixels=10**6, fetch_timeout_s=1), OutboundPolicy()),
        outbound=OutboundPolicy(),
        storage=ResultStorage(str(tmp_path / "results")),
        running_generators=running_generators,
        streams=stream_slots(settings),
        submissions=submission_slots(settings),
    )
    return create_api(state, ApiKeys([KEY], KEY_ID_SECRET.encode())), jobs
