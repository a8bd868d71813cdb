"""The job store on SQLite and on PostgreSQL (a throwaway server): transitions are compare-and-sets,
adoption goes by the database's clock and never gives one job to two replicas, migrations upgrade
an older database in place and run once when replicas start together."""

import asyncio
import sqlite3
import time

import pytest
from support.jobs import REQUEST, job
from support.postgres import STORES, fresh_database

from serve_app.jobs.database import open_store
from serve_app.jobs.sql import MIGRATIONS
from serve_app.jobs.store import DuplicateKey, NewJob


@pytest.fixture(params=STORES)
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'jobs.sqlite3'}"
    return fresh_database(request.getfixturevalue("postgres"), f"store_{abs(hash(request.node.name))}")


async def opened(url: str):
    store = open_store(url)
    await store.migrate()
    return store


def test_transitions_are_compare_and_sets(url):
    async def scenario():
        store = await opened(url)
        await store.add(job("video_a"), NewJob(owner="k", request=REQUEST), "jobs-1")
        outcomes = {
            "started by another replica": await store.start(job("video_a", "in_progress"), "jobs-2"),
            "started by its own": await store.start(job("video_a", "in_progress"), "jobs-1"),
            "started twice": await store.start(job("video_a", "in_progress"), "jobs-1"),
            "released once started": await store.release("video_a", "jobs-1"),
            "finished": await store.finish(job("video_a", "completed")),
            "finished twice": await store.finish(job("video_a", "cancelled")),
            "progress once finished": await store.progress(job("video_a", "in_progress"), "jobs-1"),
        }
        final = await store.get("video_a")
        await store.close()
        return outcomes, final

    outcomes, final = asyncio.run(scenario())
    assert outcomes == {
        "started by another replica": False, "started by its own": True, "started twice": False,
        "released once started": False, "finished": True, "finished twice": False, "progress once finished": False,
    }  # fmt: skip
    assert final.job.status == "completed"


def test_an_idempotency_key_is_unique_per_owner(url):
    async def scenario():
        store = await opened(url)
        await store.add(job("video_a"), NewJob(owner="k", request=REQUEST, idempotency_key="same"), "jobs-1")
        await store.add(job("video_b"), NewJob(owner="other", request=REQUEST, idempotency_key="same"), "jobs-1")
        with pytest.raises(DuplicateKey):
            await store.add(job("video_c"), NewJob(owner="k", request=REQUEST, idempotency_key="same"), "jobs-1")
        await store.close()

    asyncio.run(scenario())


def test_jobs_of_a_silent_or_no_replica_are_adopted_by_the_databases_clock_and_by_one_replica(url, monkeypatch):
    async def scenario():
        store = await opened(url)
        for job_id, runner in [("video_alive", "jobs-alive"), ("video_gone", "jobs-gone"), ("video_released", None)]:
            await store.add(job(job_id), NewJob(owner="k", request=REQUEST), runner or "jobs-alive")
        await store.release("video_released", "jobs-alive")
        await store.heartbeat("jobs-gone")
        await asyncio.sleep(1.2)
        # This host's clock is an hour off: beats and silence go by the database's.
        monkeypatch.setattr(time, "time", lambda: 1e10)
        await store.heartbeat("jobs-alive")
        first, second = await asyncio.gather(store.adopt("jobs-new-1", 1.0), store.adopt("jobs-new-2", 1.0))
        await store.close()
        return first, second

    first, second = asyncio.run(scenario())
    adopted = sorted(orphan.job_id for orphan in first + second)
    assert adopted == ["video_gone", "video_released"]  # each once, the live replica's job kept


def test_migrations_run_once_when_replicas_start_together(url):
    async def scenario():
        stores = [open_store(url) for _ in range(3)]
        await asyncio.gather(*(store.migrate() for store in stores))
        await stores[0].add(job("video_a"), NewJob(owner="k", request=REQUEST), "jobs-1")
        version = await stores[1]._read("SELECT version FROM schema_version")
        for store in stores:
            await store.close()
        return version

    assert asyncio.run(scenario()) == [(len(MIGRATIONS),)]


def test_a_database_of_the_release_before_versioning_is_upgraded_in_place(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as old:  # the schema the previous release made
        old.execute(
            "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, owner TEXT NOT NULL,"
            " status TEXT NOT NULL, expires_at REAL, idempotency_key TEXT, request_hash TEXT, webhook_url TEXT,"
            " runner TEXT, request TEXT NOT NULL, job TEXT NOT NULL, UNIQUE (owner, idempotency_key))"
        )
        old.execute("CREATE TABLE runners (id TEXT PRIMARY KEY, heartbeat REAL NOT NULL)")
        old.execute(
            "INSERT INTO jobs (id, owner, status, request, job) VALUES ('video_a', 'k', 'completed', ?, ?)",
            (REQUEST.model_dump_json(), job("video_a", "completed").model_dump_json()),
        )

    async def scenario():
        store = await opened(f"sqlite://{path}")
        kept = await store.get("video_a")
        usage = await store.usage("k")
        await store.close()
        return kept, usage

    kept, usage = asyncio.run(scenario())
    assert kept.job.status == "completed" and kept.owner == "k"
    assert (usage.owner_jobs, usage.owner_bytes) == (1, 0)


def test_an_id_with_a_nul_is_no_job_on_either_database(url):
    # PostgreSQL's text cannot hold a NUL: `/v1/videos/video_%00` and `?after=video_%00` were 500s.
    async def scenario():
        store = await opened(url)
        await store.add(job("video_a"), NewJob(owner="k", request=REQUEST), "jobs-1")
        found = await store.get("video_\x00"), await store.page("k", "video_\x00", 10, newest_first=True)
        await store.close()
        return found

    assert asyncio.run(scenario()) == (None, None)
