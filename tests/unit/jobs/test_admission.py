"""Admission on a real (SQLite) store: the queue's room, a key's share of it, and a key's stored jobs
and bytes, each refused with its own code and a Retry-After from how long recent jobs ran."""

import asyncio

import pytest
from support.jobs import REQUEST, job
from support.postgres import STORES, fresh_database

from serve_app.error_codes import ErrorCode
from serve_app.jobs.admission import Admission
from serve_app.jobs.database import open_store
from serve_app.jobs.store import NewJob


@pytest.fixture
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'jobs.sqlite3'}"
    return fresh_database(request.getfixturevalue("postgres"), f"admission_{abs(hash(request.node.name))}")


def refusals(tmp_path, setup, **limits) -> dict:
    """What `Admission` answers each of keys `a` and `b` after `setup(store)`."""
    limits = {"max_queued": 10, "max_per_key": 10, "max_stored_jobs_per_key": 10,
              "max_stored_bytes_per_key": 10 * 2**20, **limits}  # fmt: skip

    async def scenario() -> dict:
        store = open_store(f"sqlite://{tmp_path / 'jobs.sqlite3'}")
        await store.migrate()
        await setup(store)
        admission = Admission(store, **limits)
        admission.ran(30)
        answers = {owner: await admission.refusal(owner, None) for owner in ("a", "b")}
        await store.close()
        return answers

    return asyncio.run(scenario())


async def add(store, owner: str, count: int, status: str = "queued", stored_bytes: int = 0) -> None:
    for n in range(count):
        job_id = f"video_{owner}{status}{n}"
        await store.add(job(job_id), NewJob(owner=owner, request=REQUEST), "jobs-1")
        if status != "queued":
            await store.finish(job(job_id, status), stored_bytes=stored_bytes)


def test_a_key_under_every_limit_is_admitted(tmp_path):
    async def setup(store):
        await add(store, "a", 2)
        await add(store, "a", 2, "completed", stored_bytes=2**20)

    assert refusals(tmp_path, setup) == {"a": None, "b": None}


def test_a_full_queue_refuses_every_key_with_a_503(tmp_path):
    async def setup(store):
        await add(store, "a", 3)

    answers = refusals(tmp_path, setup, max_queued=3)
    assert answers["a"].code == answers["b"].code == "queue_full"
    # Recent jobs ran 30 s and 60 s (the starting guess): one job ahead of the limit, none running.
    assert answers["b"].retry_after_s == 45


def test_a_key_with_its_share_of_jobs_queued_or_running_gets_a_429_and_others_do_not(tmp_path):
    async def setup(store):
        await add(store, "a", 2)

    answers = refusals(tmp_path, setup, max_per_key=2)
    assert answers["a"].code == "too_many_jobs"
    assert answers["b"] is None


def test_a_key_that_stores_its_share_of_jobs_or_bytes_gets_a_429_and_others_do_not(tmp_path):
    async def many_jobs(store):
        await add(store, "a", 3, "completed")

    async def many_bytes(store):
        await add(store, "a", 1, "completed", stored_bytes=5 * 2**20)

    for setup in (many_jobs, many_bytes):
        answers = refusals(tmp_path / setup.__name__, setup, max_stored_jobs_per_key=3,
                           max_stored_bytes_per_key=5 * 2**20)  # fmt: skip
        assert answers["a"].code == "storage_quota", setup.__name__
        assert "Delete some" in answers["a"].message and answers["a"].retry_after_s >= 1
        assert answers["b"] is None


@pytest.mark.parametrize("url", STORES, indirect=True)
def test_concurrent_submissions_through_two_replicas_never_pass_the_key_limit_together(url):
    # With a limit of 3, 10 concurrent submissions were all queued: the check, then the insert.
    async def scenario() -> tuple[list, int]:
        replicas = [open_store(url), open_store(url)]
        await replicas[0].migrate()
        admissions = [Admission(store, max_queued=100, max_per_key=3, max_stored_jobs_per_key=100,
                                max_stored_bytes_per_key=2**30) for store in replicas]  # fmt: skip

        async def submit(n: int):
            admission, store = admissions[n % 2], replicas[n % 2]
            if refusal := await admission.refusal("a", None):
                return refusal
            admit = lambda usage: admission.judge(usage, None)  # noqa: E731
            return await store.add(job(f"video_{n}"), NewJob(owner="a", request=REQUEST), "jobs-1", admit)

        outcomes = await asyncio.gather(*(submit(n) for n in range(10)))
        queued = (await replicas[0].usage("a")).owner_active
        for store in replicas:
            await store.close()
        return outcomes, queued

    outcomes, queued = asyncio.run(scenario())
    assert queued == 3 and outcomes.count(None) == 3
    assert {refusal.code for refusal in outcomes if refusal is not None} == {"too_many_jobs"}


def test_a_full_results_store_refuses_every_key_with_a_503(tmp_path):
    async def setup(store):
        await add(store, "a", 1, "completed", stored_bytes=3 * 2**20)
        await add(store, "c", 1, "completed", stored_bytes=3 * 2**20)

    answers = refusals(tmp_path, setup, max_stored_bytes=6 * 2**20)
    assert answers["a"].code == answers["b"].code == ErrorCode.STORAGE_FULL
    assert ErrorCode.STORAGE_FULL.http_status == 503
    assert answers["b"].retry_after_s >= 1
    assert refusals(tmp_path / "room", setup, max_stored_bytes=7 * 2**20) == {"a": None, "b": None}
