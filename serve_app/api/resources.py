"""The jobs API's resources, as the Ingress answers them: the OpenAI video object (a job's state
from the Jobs deployment, `messages.Job`, with the fields of the OpenAI type) and a page of them."""

from typing import Literal

from pydantic import BaseModel

from serve_app.messages import Job, JobPage


class Video(Job):
    """A video job, as `GET /v1/videos/{id}` returns it (the OpenAI video object, plus ours)."""

    object: Literal["video"] = "video"

    @classmethod
    def of(cls, job: Job) -> "Video":
        return cls(**dict(job))


class VideoList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Video]
    first_id: str | None
    last_id: str | None
    has_more: bool

    @classmethod
    def of(cls, page: JobPage) -> "VideoList":
        data = [Video.of(job) for job in page.jobs]
        first, last = (data[0].id, data[-1].id) if data else (None, None)
        return cls(data=data, first_id=first, last_id=last, has_more=page.has_more)
