"""The queue is fair between keys, end to end (`serve_app.jobs.fair_queue`): real Ray Serve, real
HTTP, the simulated model on the application the tests share (`shared_simulated_app`: one generator
replica, so Serve holds one job at a time and the rest wait their turn in Jobs)."""

import httpx
import pytest
from support.service import API_KEYS, SLOW, submit, wait_for


@pytest.fixture
def other(shared_simulated_app):
    headers = {"Authorization": f"Bearer {API_KEYS[1]}"}
    with httpx.Client(base_url=shared_simulated_app.url, headers=headers, timeout=60) as http:
        yield http


def test_a_key_that_comes_later_runs_before_the_waiting_jobs_of_a_busy_key_and_is_told_so(
    shared_simulated_app, other
):
    client = shared_simulated_app.client
    mine = [submit(client, **SLOW) for _ in range(3)]
    theirs = None
    try:
        wait_for(client, mine[0]["id"], until=lambda job: job["status"] == "in_progress")
        theirs = submit(other, **SLOW)
        # First come, first served, it would be third; it is next, and its position says so.
        positions = [client.get(f"/v1/videos/{job['id']}").json()["queue_position"] for job in mine[1:]]
        assert theirs["queue_position"] == 1 and positions == [2, 3]

        client.post(f"/v1/videos/{mine[0]['id']}/cancel")
        wait_for(other, theirs["id"], until=lambda job: job["status"] != "queued")
        waiting = [client.get(f"/v1/videos/{job['id']}").json() for job in mine[1:]]
        assert [(job["status"], job["queue_position"]) for job in waiting] == [("queued", 1), ("queued", 2)]
    finally:
        for http, job in [(client, job) for job in mine] + ([(other, theirs)] if theirs else []):
            http.post(f"/v1/videos/{job['id']}/cancel")
