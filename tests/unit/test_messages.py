"""The messages' vocabulary: a job's status is one enum, its values the API's strings, and which
are final is said once (`is_terminal`), what the SQL's active statuses are the complement of."""

import pytest
from support.jobs import job

from serve_app.api.models import apply_model
from serve_app.api.protocol import VideoRequest
from serve_app.config import AppArgs
from serve_app.jobs.sql import ACTIVE
from serve_app.messages import JobStatus


def test_the_final_statuses_are_completed_failed_and_cancelled():
    assert {status for status in JobStatus if status.is_terminal} == {"completed", "failed", "cancelled"}
    assert not JobStatus.QUEUED.is_terminal and not JobStatus("in_progress").is_terminal


def test_a_status_is_its_api_string_on_the_wire():
    stored = job("video_1", "cancelled")
    assert stored.status is JobStatus.CANCELLED and stored.finished
    assert stored.model_dump(mode="json")["status"] == "cancelled"
    assert f"{JobStatus.IN_PROGRESS}" == "in_progress"


def test_the_sql_active_statuses_are_the_others():
    assert ACTIVE == "('queued', 'in_progress')"


def test_a_requests_shape_needs_its_guidance_resolved_from_its_model():
    request = VideoRequest(prompt="a fox")  # guidance_scale omitted: the model's, once apply_model ran
    with pytest.raises(ValueError, match="guidance_scale"):
        _ = request.shape
    resolved = apply_model(request, AppArgs().served_models)
    assert resolved.shape.guidance == (resolved.guidance_scale > 1.0)
