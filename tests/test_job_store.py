"""The jobs database: a file made before jobs replicas kept heartbeats still opens, and a job is
adopted only when its jobs replica has gone quiet."""

import sqlite3
import time

from conftest import SMALL

from serve_app.job_store import JobStore
from serve_app.schemas import GenerationRequest, Job, VideoDetails


def test_a_database_without_runners_is_upgraded_in_place(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, owner TEXT NOT NULL,"
            " status TEXT NOT NULL, expires_at REAL, idempotency_key TEXT, request_hash TEXT, webhook_url TEXT,"
            " request TEXT NOT NULL, job TEXT NOT NULL, UNIQUE (owner, idempotency_key))"
        )
        old.execute(
            "INSERT INTO jobs (id, owner, status, request, job) VALUES ('video_a', 'k', 'completed', '{}', '{}')"
        )
    store = JobStore(path)
    store.claim("video_a", "jobs-1")
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT runner FROM jobs WHERE id = 'video_a'").fetchone() == ("jobs-1",)


def test_only_jobs_of_a_quiet_runner_are_orphans(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    now = time.time()
    details = VideoDetails(prompt="x", negative_prompt="", guidance_scale=5.0, fps=24, seed=1, mode="t2v", **SMALL)
    request = GenerationRequest(**details.model_dump(exclude={"mode", "image_url", "model", "requested", "timings"}))
    for job_id, runner in [("video_alive", "jobs-alive"), ("video_gone", "jobs-gone"), ("video_none", None)]:
        job = Job(id=job_id, status="queued", created_at=1, model="tiny", prompt="x", size="64x64", seconds="1.04",
                  details=details)  # fmt: skip
        store.add(job, "k", request)
        store.claim(job_id, runner)
    store.heartbeat("jobs-alive", now)
    store.heartbeat("jobs-gone", now - 60)
    assert [job.id for job in store.orphans(alive_since=now - 10)] == ["video_gone", "video_none"]
    store.retire("jobs-alive")
    assert [job.id for job in store.orphans(alive_since=now - 10)] == ["video_alive", "video_gone", "video_none"]
