"""The jobs API, /v1/videos, end to end: real Ray Serve, real HTTP, the tiny pipeline; what needs
steps that last (events, cancel, a client that leaves) on the shared simulated application."""

import base64
import io
import json
import threading
import time

import httpx
import pytest
from PIL import Image
from ray import serve
from support.media import probe_mp4
from support.service import API_KEYS, SLOW, SMALL, TIMINGS, submit, wait_for

from serve_app.messages import JobStatus


def events_of(client: httpx.Client, job_id: str) -> tuple[list[dict], int]:
    """The job objects sent on its event stream, and the number of keep-alive comments."""
    events, keepalives = [], 0
    with client.stream("GET", f"/v1/videos/{job_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith(":"):
                keepalives += 1
            elif line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    return events, keepalives


def test_submit_poll_download_and_thumbnail(client):
    job = submit(client, seed=3, fps=12, **{**SMALL, "num_inference_steps": 12})
    assert job["object"] == "video" and job["id"].startswith("video_")
    assert not JobStatus(job["status"]).is_terminal and job["progress"] == 0
    assert job["details"]["seed"] == 3 and job["details"]["mode"] == "t2v"

    seen = []
    done = wait_for(client, job["id"], until=lambda j: seen.append(j["progress"]) or j["status"] == "completed")
    assert seen == sorted(seen) and seen[-1] == 100
    assert done["created_at"] <= done["started_at"] <= done["completed_at"] < done["expires_at"]
    assert set(done["details"]["timings"]) == TIMINGS
    assert done["queue_position"] is None and done["error"] is None

    video = client.get(f"/v1/videos/{job['id']}/content")
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert probe_mp4(video.content)["frames"] == 25
    assert probe_mp4(video.content)["fps"] == 12.0

    thumbnail = client.get(f"/v1/videos/{job['id']}/content", params={"variant": "thumbnail"})
    assert thumbnail.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumbnail.content)).size == (64, 64)


def test_a_job_and_predict_give_the_same_bytes_for_the_same_seed(client):
    job = submit(client, seed=99, **SMALL)
    wait_for(client, job["id"])
    from_job = client.get(f"/v1/videos/{job['id']}/content").content
    predicted = client.post("/predict", json={"prompt": "a lighthouse in a storm", "seed": 99, **SMALL})
    assert base64.b64decode(predicted.json()["video_base64"]) == from_job


def test_predict_runs_as_a_listed_job(client):
    client.post("/predict", json={"prompt": "listed", **SMALL}).raise_for_status()
    newest = client.get("/v1/videos", params={"limit": 1}).json()["data"][0]
    assert newest["details"]["prompt"] == "listed" and newest["status"] == "completed"


def test_events_report_every_step_then_end_with_the_final_status(shared_simulated_app):
    client = shared_simulated_app.client
    # Simulated steps long enough (0.7 s at 1280x704x121) that each reaches the stream before the
    # next; and it decodes for 1.8 s after the last step: the stream must keep itself alive.
    job = submit(client, height=704, width=1280, num_frames=121, num_inference_steps=10)
    events, keepalives = events_of(client, job["id"])
    assert events[-1]["status"] == "completed" and events[-1]["progress"] == 100
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress)
    # Step by step: 10 steps give 10, 20, ... 90, then 99 after the last one. The stream sends the
    # job as it is when it reads it, so on a loaded machine two steps can come as one event: most
    # steps show, not necessarily all.
    assert len({10, 20, 30, 40, 50, 60, 70, 80, 90} & set(progress)) >= 6 and 99 in progress
    assert keepalives >= 1
    # A finished job's stream sends its final state and ends.
    again, _ = events_of(client, job["id"])
    assert [e["status"] for e in again] == ["completed"]


def test_range_requests_let_a_player_seek(client):
    job = submit(client, **SMALL)
    wait_for(client, job["id"])
    url = f"/v1/videos/{job['id']}/content"
    whole = client.get(url)
    size = len(whole.content)
    assert whole.headers["accept-ranges"] == "bytes" and int(whole.headers["content-length"]) == size

    head = client.get(url, headers={"Range": "bytes=0-99"})
    assert head.status_code == 206
    assert head.headers["content-range"] == f"bytes 0-99/{size}"
    rest = client.get(url, headers={"Range": "bytes=100-"})
    assert rest.status_code == 206 and head.content + rest.content == whole.content
    tail = client.get(url, headers={"Range": "bytes=-10"})
    assert tail.content == whole.content[-10:]

    beyond = client.get(url, headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{size}"
    assert beyond.json()["error"]["code"] == "range_not_satisfiable"


def test_cancel_a_queued_job_and_a_running_one(shared_simulated_app):
    client = shared_simulated_app.client
    running = submit(client, **SLOW)
    wait_for(client, running["id"], until=lambda j: j["progress"] > 0)
    queued = submit(client, **SMALL)
    after = submit(client, **SMALL)
    assert queued["status"] == "queued" and queued["queue_position"] == 1
    assert after["queue_position"] == 2

    cancelled = client.post(f"/v1/videos/{queued['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["queue_position"] is None
    assert client.get(f"/v1/videos/{after['id']}").json()["queue_position"] == 1

    stopped_at = time.monotonic()
    stopped = client.post(f"/v1/videos/{running['id']}/cancel").json()
    assert stopped["status"] == "cancelled" and stopped["progress"] < 99
    # The running job had seconds of steps and decoding left: the next one starting right
    # away shows that its replica stopped at the end of the step.
    wait_for(client, after["id"], until=lambda j: j["status"] != "queued")
    assert time.monotonic() - stopped_at < 3
    assert wait_for(client, after["id"])["status"] == "completed"

    never_ran = client.get(f"/v1/videos/{queued['id']}").json()
    assert never_ran["status"] == "cancelled" and never_ran["started_at"] is None
    assert client.get(f"/v1/videos/{running['id']}").json()["status"] == "cancelled"
    missing = client.get(f"/v1/videos/{running['id']}/content")
    assert missing.status_code == 409 and missing.json()["error"]["code"] == "video_not_ready"
    # Cancelling a finished job changes nothing.
    assert client.post(f"/v1/videos/{after['id']}/cancel").json()["status"] == "completed"


def test_a_client_that_leaves_predict_cancels_its_job(shared_simulated_app):
    client = shared_simulated_app.client

    def impatient() -> None:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/predict", json={"prompt": "impatient", **SLOW}, timeout=3)

    thread = threading.Thread(target=impatient)
    thread.start()
    thread.join()
    job = client.get("/v1/videos", params={"limit": 1}).json()["data"][0]
    assert job["details"]["prompt"] == "impatient"
    assert wait_for(client, job["id"], timeout=20)["status"] == "cancelled"


def test_jobs_are_listed_newest_first_and_paginated(client):
    ids = [submit(client, **SMALL)["id"] for _ in range(3)]
    for job_id in ids:
        wait_for(client, job_id)
    first = client.get("/v1/videos", params={"limit": 2}).json()
    assert first["object"] == "list" and first["has_more"] is True
    assert [j["id"] for j in first["data"]] == ids[::-1][:2] and first["last_id"] == ids[1]
    second = client.get("/v1/videos", params={"limit": 2, "after": first["last_id"]}).json()
    assert second["data"][0]["id"] == ids[0]


def test_a_job_is_invisible_to_another_key(client, service):
    job = submit(client, **SMALL)
    wait_for(client, job["id"])
    with httpx.Client(base_url=service, headers={"Authorization": f"Bearer {API_KEYS[1]}"}) as other:
        for method, path in [
            ("GET", ""),
            ("GET", "/content"),
            ("GET", "/events"),
            ("POST", "/cancel"),
            ("DELETE", ""),
        ]:
            response = other.request(method, f"/v1/videos/{job['id']}{path}")
            assert response.status_code == 404, (method, path)
            assert response.json()["error"]["code"] == "not_found"
        assert job["id"] not in [j["id"] for j in other.get("/v1/videos", params={"limit": 100}).json()["data"]]
        assert other.get("/v1/videos", params={"after": job["id"]}).status_code == 400
    assert client.get(f"/v1/videos/{job['id']}").json()["status"] == "completed"


def test_delete_removes_the_job_and_its_files(client, data_dir):
    job = submit(client, **SMALL)
    wait_for(client, job["id"])
    assert (data_dir / "results" / job["id"] / "video.mp4").is_file()
    assert client.delete(f"/v1/videos/{job['id']}").json() == {
        "id": job["id"],
        "object": "video.deleted",
        "deleted": True,
    }
    assert client.get(f"/v1/videos/{job['id']}").status_code == 404
    assert not (data_dir / "results" / job["id"]).exists()
    assert client.delete(f"/v1/videos/{job['id']}").status_code == 404


def test_idempotency_key_replays_the_same_job_and_refuses_another_body(client):
    headers = {"Idempotency-Key": "order-4711"}
    body = {"prompt": "replayed", **SMALL}
    first = client.post("/v1/videos", json=body, headers=headers)
    again = client.post("/v1/videos", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert first.json()["details"]["seed"] == again.json()["details"]["seed"]

    conflict = client.post("/v1/videos", json={**body, "prompt": "something else"}, headers=headers)
    assert conflict.status_code == 409
    assert conflict.json()["error"] == {
        "code": "idempotency_conflict",
        "message": "This Idempotency-Key was already used with a different request body.",
        "param": "Idempotency-Key",
    }
    too_long = client.post("/v1/videos", json=body, headers={"Idempotency-Key": "k" * 256})
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "Idempotency-Key"
    wait_for(client, first.json()["id"])


@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        ("/v1/videos", {"limit": 0}, "limit"),
        ("/v1/videos", {"limit": "many"}, "limit"),
        ("/v1/videos/video_nope/content", {"variant": "poster"}, "variant"),
    ],
)
def test_bad_query_parameters_are_400s(client, path, params, param):
    response = client.get(path, params=params)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_an_unknown_job_is_a_404_everywhere(client):
    for method, path in [("GET", ""), ("GET", "/content"), ("GET", "/events"), ("POST", "/cancel"), ("DELETE", "")]:
        response = client.request(method, f"/v1/videos/video_unknown{path}")
        assert response.status_code == 404
        assert response.json()["error"]["param"] == "video_id"


def test_jobs_routes_need_a_key(service):
    response = httpx.post(f"{service}/v1/videos", json={"prompt": "x"})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{service}/v1/videos").status_code == 401


def test_expired_jobs_and_their_files_are_deleted(client, data_dir):
    job = wait_for(client, submit(client, **SMALL)["id"])
    assert job["expires_at"] - job["completed_at"] == 24 * 3600  # the default retention
    # The deployment's own clean-up, called now with a clock moved forward.
    jobs = serve.get_deployment_handle("Jobs", app_name="wan")
    jobs.expire.remote(now=job["expires_at"] - 1).result()
    assert client.get(f"/v1/videos/{job['id']}").status_code == 200
    jobs.expire.remote(now=job["expires_at"]).result()
    assert client.get(f"/v1/videos/{job['id']}").status_code == 404
    assert not (data_dir / "results" / job["id"]).exists()
