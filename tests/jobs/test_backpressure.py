"""Backpressure: past the per-key limit a submission gets 429, past the queue bound 503, both
with Retry-After, before any work is done for it and without leaving a job behind. On the
simulated application the tests share (`shared_simulated_app`), whose queue these tests fill and
empty again."""

import httpx
import pytest
from support.image_server import REQUESTED
from support.service import API_KEYS, SLOW, SMALL, TEST_ARGS, submit, wait_for

from serve_app.messages import JobStatus


@pytest.fixture
def client(shared_simulated_app):
    return shared_simulated_app.client


@pytest.fixture
def other(shared_simulated_app):
    headers = {"Authorization": f"Bearer {API_KEYS[1]}"}
    with httpx.Client(base_url=shared_simulated_app.url, headers=headers, timeout=60) as http:
        yield http


def listed(http: httpx.Client) -> list[str]:
    return [job["id"] for job in http.get("/v1/videos", params={"limit": 100}).json()["data"]]


def cancel_all(http: httpx.Client, ids: list[str]) -> None:
    for job_id in ids:
        assert http.post(f"/v1/videos/{job_id}/cancel").status_code == 200


def test_a_key_over_its_limit_gets_429_and_others_are_served(client, other, image_server):
    limit = TEST_ARGS["max_jobs_per_key"]
    mine = [submit(client, **SLOW)["id"] for _ in range(limit)]
    try:
        before, fetched = listed(client), len(REQUESTED)
        refused = client.post(
            "/v1/videos", json={"prompt": "one too many", "image_url": f"{image_server}/cat.png", **SMALL}
        )
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_jobs"
        assert f"already has {limit} jobs" in refused.json()["error"]["message"]
        assert int(refused.headers["retry-after"]) >= 1
        # No trace: no job, and the image was never fetched.
        assert listed(client) == before and len(REQUESTED) == fetched
        assert client.post("/predict", json={"prompt": "sync too", **SMALL}).status_code == 429
        # Another key still gets in.
        theirs = submit(other, **SMALL)
        assert theirs["status"] == "queued"
        cancel_all(other, [theirs["id"]])
    finally:
        cancel_all(client, mine)


def test_a_full_queue_gets_503_with_retry_after(client, other):
    mine = [submit(client, **SLOW)["id"]]
    wait_for(client, mine[0], until=lambda job: job["status"] == "in_progress")
    mine += [submit(client, **SLOW)["id"] for _ in range(TEST_ARGS["max_jobs_per_key"] - 1)]
    theirs = []
    try:
        # One of mine runs; the rest wait, until the queue holds max_queued_jobs.
        while len(theirs) < TEST_ARGS["max_queued_jobs"] - TEST_ARGS["max_jobs_per_key"] + 1:
            theirs.append(submit(other, **SLOW)["id"])
        before = listed(other)
        refused = other.post("/v1/videos", json={"prompt": "no room", **SMALL})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "queue_full"
        assert 1 <= int(refused.headers["retry-after"]) <= 3600
        assert listed(other) == before
    finally:
        cancel_all(other, theirs)
        cancel_all(client, mine)
    assert not JobStatus(submit(other, **SMALL)["status"]).is_terminal
