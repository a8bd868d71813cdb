"""The jobs API's resources: the video object (a job's state from Jobs, shown with OpenAI's
fields) and a page of them; the webhook that Jobs sends carries the same video object."""

import json

from support.jobs import job

from serve_app.api.resources import Video, VideoList
from serve_app.jobs.webhooks import event
from serve_app.messages import JobPage

# The OpenAI video object's fields, and ours.
FIELDS = {"id", "object", "status", "progress", "created_at", "completed_at", "expires_at", "model", "prompt",
          "size", "seconds", "error", "queue_position", "worker", "started_at", "details"}  # fmt: skip


def test_the_video_object_is_the_jobs_state_with_the_openai_fields():
    state = job("video_1", "in_progress")
    video = Video.of(state).model_dump(mode="json")
    assert set(video) == FIELDS and video["object"] == "video"
    assert {k: v for k, v in video.items() if k != "object"} == state.model_dump(mode="json")
    assert "object" not in state.model_dump()  # the message carries no HTTP shape


def test_a_page_of_videos_names_its_first_and_last():
    page = VideoList.of(JobPage(jobs=[job("video_1"), job("video_2")], has_more=True))
    assert (page.object, page.first_id, page.last_id, page.has_more) == ("list", "video_1", "video_2", True)
    empty = VideoList.of(JobPage(jobs=[], has_more=False))
    assert (empty.data, empty.first_id, empty.last_id) == ([], None, None)


def test_a_webhook_carries_the_video_object_the_api_shows():
    state = job("video_1", "completed")
    body = json.loads(event(state, "msg_1"))
    assert body["type"] == "video.completed"
    assert body["data"] == Video.of(state).model_dump(mode="json")
