"""The Jobs deployment's logic without Ray: a real store (SQLite, and PostgreSQL on a throwaway
server), real result storage, a fake generator handle (`support.fakes`: no GPU here). One replica
here; several in `test_replicas.py`."""

import asyncio
import logging
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Event, Thread

import pytest
from support.fakes import FakeGenerator, FakeStream, start_jobs
from support.polling import apoll
from support.postgres import STORES, fresh_database

from serve_app.capacity import Capacity, GiB, Plan, StageFit
from serve_app.common.storage import REFERENCE, VIDEO, ResultStorage
from serve_app.config import AppArgs
from serve_app.jobs import outbox
from serve_app.jobs.postgres import PostgresStore
from serve_app.jobs.sqlite import SqliteStore
from serve_app.messages import (
    DEFAULT_NEGATIVE_PROMPT,
    GenerationFailure,
    GenerationRequest,
    Job,
    Started,
    Submission,
    VideoDetails,
)


@pytest.fixture(params=STORES)
def args(request, tmp_path) -> AppArgs:
    url = None
    if request.param == "postgres":
        url = fresh_database(request.getfixturevalue("postgres"), f"jobs_{abs(hash(request.node.name))}")
    return AppArgs(model="tiny", data_dir=tmp_path, database_url=url, webhook_retry_delays_s=[0.5, 0.5],
                   url_allowlist=["127.0.0.1"], max_queued_jobs=4, max_jobs_per_key=3)  # fmt: skip


def submission(prompt: str = "a lantern", steps: int = 3, owner: str = "key-a", **fields) -> Submission:
    request = GenerationRequest(
        prompt=prompt, negative_prompt=DEFAULT_NEGATIVE_PROMPT, height=64, width=64, num_frames=25,
        num_inference_steps=steps, guidance_scale=5.0, fps=24, seed=1, image_png=fields.pop("image_png", None),
        model="tiny", shift=3.0,
    )  # fmt: skip
    details = VideoDetails(**request.model_dump(exclude={"image_png"}), mode="t2v")
    return Submission(owner=owner, request=request, details=details, **fields)


async def until_finished(jobs, job: Job, owner: str = "key-a") -> Job:
    while not job.finished:
        job = await jobs.watch(owner, job.id, job, timeout_s=10)
    return job


async def status_is(jobs, job: Job, status: str, owner: str = "key-a") -> bool:
    return (await jobs.get(owner, job.id)).status == status


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_job_is_queued_runs_reports_its_steps_and_completes_with_its_files(args):
    async def scenario():
        generator = FakeGenerator(step_s=0.2)
        jobs = await start_jobs(generator, args)
        job = await jobs.submit(submission(steps=4))
        # Queued, next to start; or, on a loaded machine, started already (test_a_job_that_starts_before...).
        assert (job.status, job.queue_position) == ("queued", 1) or job.status == "in_progress", job
        seen = [job]
        while not seen[-1].finished:
            seen.append(await jobs.watch("key-a", job.id, seen[-1], timeout_s=10))
        await jobs.__del__()
        return generator, seen

    generator, seen = run(scenario())
    done = seen[-1]
    assert [job.status for job in seen][-1] == "completed" and done.progress == 100
    assert {25, 50, 75} <= {job.progress for job in seen}  # woken at each step, no polling
    assert done.worker == "fake-gpu" and done.details.timings.queued_s >= 0
    assert generator.started["a lantern"] == generator.completed["a lantern"] == 1
    assert ResultStorage(args.results_location).read(done.id, VIDEO).startswith(b"\x00\x00\x00\x18ftyp")


def test_a_job_that_starts_before_its_answer_is_made_is_answered_as_it_is_now(args):
    # The race a loaded machine runs into: the job starts between its dispatch and `submit`'s
    # answer. Forced here: the dispatch returns once the store says the job started.
    async def scenario():
        generator = FakeGenerator(step_s=0.2)
        jobs = await start_jobs(generator, args)
        dispatch = jobs._dispatcher.dispatch

        async def started(job_id: str) -> bool:
            return (await jobs._store.get(job_id)).job.status == "in_progress"

        async def dispatch_and_start(job_id: str, *rest: object) -> None:
            await dispatch(job_id, *rest)
            await apoll(lambda: started(job_id), every_s=0.01, what="the job starting")

        jobs._dispatcher.dispatch = dispatch_and_start
        job = await jobs.submit(submission())
        await until_finished(jobs, job)
        await jobs.__del__()
        return job

    job = run(scenario())
    assert job.status == "in_progress" and job.started_at is not None and job.queue_position is None, job


def test_a_generation_that_raises_fails_its_job_without_leaking(args, caplog):
    secret = "device-side assert at /opt/internal/kernels.cu:42"

    class Raising(FakeStream):
        async def generate(self):
            yield Started(worker="fake-gpu", runtime={})
            raise RuntimeError(f"CUDA error: {secret}")

    async def scenario():
        jobs = await start_jobs(FakeGenerator(stream=Raising), args)
        job = await until_finished(jobs, await jobs.submit(submission()))
        await jobs.__del__()
        return job

    with caplog.at_level(logging.ERROR):
        job = run(scenario())
    assert job.status == "failed" and job.error.code == "generation_failed"
    assert secret not in job.error.message and job.id in job.error.message
    assert secret in caplog.text


def test_a_failure_the_replica_reports_becomes_the_jobs_error(args):
    failure = GenerationFailure(code="gpu_out_of_memory", message="The GPU ran out of memory; try fewer frames.")

    class OutOfMemory(FakeStream):
        async def generate(self):
            yield Started(worker="fake-gpu", runtime={})
            yield failure

    async def scenario():
        jobs = await start_jobs(FakeGenerator(stream=OutOfMemory), args)
        job = await until_finished(jobs, await jobs.submit(submission()))
        await jobs.__del__()
        return job

    job = run(scenario())
    assert job.status == "failed" and job.error.model_dump() == failure.model_dump()


def test_a_change_made_before_the_replica_follows_the_changes_still_wakes_its_watchers(args, monkeypatch):
    # A loaded machine: the change feed (PostgreSQL's LISTEN, SQLite's first read of its change
    # table) begins half a second after the replica, and the job runs and completes meanwhile.
    for store in (SqliteStore, PostgresStore):

        async def late(self, follow=store.changes):
            await asyncio.sleep(0.5)
            async for job_id in follow(self):
                yield job_id

        monkeypatch.setattr(store, "changes", late)

    async def scenario():
        jobs = await start_jobs(FakeGenerator(step_s=0.02), args)
        started = time.monotonic()
        job = await until_finished(jobs, await jobs.submit(submission(steps=2)))
        waited = time.monotonic() - started
        await jobs.__del__()
        return job, waited

    job, waited = run(scenario())
    # Woken when the feed begins (it says any job may have changed), not by the long poll's 10 s.
    assert job.status == "completed" and waited < 5, waited


def test_a_cancelled_queued_job_never_runs_and_a_cancelled_running_one_stops(args):
    async def scenario():
        generator = FakeGenerator(step_s=0.05)
        jobs = await start_jobs(generator, args)
        running = await jobs.submit(submission("running", steps=200))
        queued = await jobs.submit(submission("queued"))
        await apoll(lambda: status_is(jobs, running, "in_progress"), what="the job starting")
        await jobs.cancel("key-a", queued.id)
        await jobs.cancel("key-a", running.id)
        await asyncio.sleep(0.3)
        states = [await jobs.get("key-a", job.id) for job in (running, queued)]
        await jobs.__del__()
        return generator, states

    generator, (running, queued) = run(scenario())
    assert running.status == queued.status == "cancelled"
    assert generator.started == {"running": 1} and generator.stopped == {"running": 1}
    assert running.progress < 50


def test_a_submission_whose_caller_goes_away_once_the_job_is_stored_still_runs_it(args):
    # Serve cancels the Jobs call when the HTTP client disconnects; a stored job left undispatched
    # would wait, held by this replica, until the replica stopped.
    async def scenario():
        generator = FakeGenerator(step_s=0.01)
        jobs = await start_jobs(generator, args)
        stored = asyncio.Event()
        add = jobs._store.add

        async def add_then_signal(*arguments):
            await add(*arguments)
            stored.set()

        jobs._store.add = add_then_signal
        call = asyncio.create_task(jobs.submit(submission("left behind")))
        await stored.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        (job,) = (await jobs.page("key-a", None, 10, newest_first=True)).jobs
        finished = await asyncio.wait_for(until_finished(jobs, job), timeout=10)
        await jobs.__del__()
        return finished, generator

    finished, generator = run(scenario())
    assert finished.status == "completed" and generator.completed == {"left behind": 1}


def test_admission_refuses_a_full_queue_a_busy_key_and_a_video_the_gpus_cannot_hold(args):
    capacity = Capacity(
        plan=Plan(memory_mode="full", vae_tiling=False, cfg_batch=True),
        budget_bytes=25 * GiB,
        stages={name: StageFit(fixed=20 * GiB, per_voxel=100.0) for name in (
            "text_encoding", "image_encoding", "denoising_batch_1", "denoising_batch_2", "decoding")},
    )  # fmt: skip

    async def scenario():
        generator = FakeGenerator(replicas=0)  # nothing starts: the queue fills
        jobs = await start_jobs(generator, args)
        outcomes = [await jobs.submit(submission(f"job {i}", owner="key-a")) for i in range(4)]
        outcomes.append(await jobs.submit(submission("fills the queue", owner="key-b")))
        outcomes.append(await jobs.submit(submission("one more", owner="key-c")))
        # A generator that reports its memory: a video over it is refused before it is queued.
        jobs._generator_started("tiny", Started(worker="gpu", runtime={}, capacity=capacity))
        large = submission("large")
        large = large.model_copy(update={"request": large.request.model_copy(update={"width": 2048, "height": 2048})})
        outcomes.append(await jobs.admit("key-c", shape=large.request.shape, model="tiny"))
        for job in outcomes[:3]:
            await jobs.cancel("key-a", job.id)
        await jobs.cancel("key-b", outcomes[4].id)
        await jobs.__del__()
        return outcomes

    *accepted, key_full, last_place, queue_full, too_large = run(scenario())
    assert [job.status for job in (*accepted, last_place)] == ["queued"] * 4
    # Domain outcomes: a code each (its HTTP status is the Ingress's).
    assert key_full.code == "too_many_jobs" and key_full.retry_after_s >= 1
    assert queue_full.code == "queue_full" and too_large.code == "video_too_large"
    assert "2048x2048 with 25 frames needs about" in too_large.message


def test_the_same_idempotency_key_gets_the_same_job_and_another_body_a_conflict(args):
    async def scenario():
        jobs = await start_jobs(FakeGenerator(), args)
        first = await jobs.submit(submission(idempotency_key="k1", request_hash="h1"))
        again = await jobs.submit(submission(idempotency_key="k1", request_hash="h1"))
        other = await jobs.submit(submission(idempotency_key="k1", request_hash="h2"))
        await until_finished(jobs, first)
        await jobs.__del__()
        return first, again, other

    first, again, other = run(scenario())
    assert again.id == first.id and other.code == "idempotency_conflict"


def test_a_reference_image_waits_in_storage_not_the_database_and_goes_once_the_job_starts(args):
    async def scenario():
        generator = FakeGenerator(replicas=0)
        jobs = await start_jobs(generator, args)
        job = await jobs.submit(submission(image_png=b"\x89PNG fake reference"))
        storage = ResultStorage(args.results_location)
        waiting = storage.exists(job.id, REFERENCE)
        stored = await jobs._store.request(job.id)
        generator.replicas.release()  # a replica frees up
        done = await until_finished(jobs, job)
        await jobs.__del__()
        return generator, waiting, stored, storage.exists(done.id, REFERENCE), done

    generator, waiting, stored, kept, done = run(scenario())
    assert waiting and stored.image_png is None and not kept and done.status == "completed"


class _Receiver(BaseHTTPRequestHandler):
    answers: list[int] = []
    received: list[dict] = []
    answering = Event()  # cleared: an attempt waits for it, unanswered

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append({"id": self.headers["webhook-id"], "body": body})
        self.answering.wait(30)
        self.send_response(self.answers.pop(0) if self.answers else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.answers, _Receiver.received, _Receiver.answering = [], [], Event()
    _Receiver.answering.set()
    Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Receiver
    server.shutdown()


def test_a_webhook_waits_in_the_outbox_across_a_restart_and_is_retried_with_the_same_id(args, receiver, monkeypatch):
    url, handler = receiver
    monkeypatch.setenv("WAN_WEBHOOK_SECRET", "a signing secret")
    monkeypatch.setattr(outbox, "POLL_S", 0.1)
    handler.answers = [500]  # the first attempt fails

    async def scenario():
        jobs = await start_jobs(FakeGenerator(), args)
        job = await until_finished(jobs, await jobs.submit(submission(webhook_url=url)))
        await apoll(lambda: handler.received, every_s=0.05, what="the first attempt")
        await jobs.__del__()  # stopped before the retry, due 0.2 s after the failure
        handler.answers = [200]
        restarted = await start_jobs(FakeGenerator(), args)
        await apoll(lambda: len(handler.received) >= 2, every_s=0.05, what="the retry")
        await asyncio.sleep(0.5)  # and never again once delivered
        await restarted.__del__()
        return job

    job = run(scenario())
    first, second, *more = handler.received
    assert not more and first["id"] == second["id"] and first["body"] == second["body"]
    assert f'"id": "{job.id}"'.encode() in first["body"] and b'"type": "video.completed"' in first["body"]


def test_a_replica_that_stops_while_a_webhook_attempt_is_in_flight_hands_the_event_to_the_next_at_once(
    args, receiver, monkeypatch
):
    url, handler = receiver
    monkeypatch.setenv("WAN_WEBHOOK_SECRET", "a signing secret")
    monkeypatch.setattr(outbox, "POLL_S", 0.1)
    handler.answering.clear()  # the first attempt gets no answer while its replica is up

    async def scenario():
        jobs = await start_jobs(FakeGenerator(), args)
        job = await until_finished(jobs, await jobs.submit(submission(webhook_url=url)))
        await apoll(lambda: handler.received, every_s=0.05, what="the first attempt")
        await jobs.__del__()
        handler.answering.set()
        restarted = await start_jobs(FakeGenerator(), args)
        # Not after its lease (3 x webhook_timeout_s + POLL_S: 30 s) but at the next replica's first poll.
        await apoll(lambda: len(handler.received) >= 2, timeout_s=10, every_s=0.05, what="the next attempt")
        await asyncio.sleep(0.5)  # and never again once delivered
        await restarted.__del__()
        return job

    job = run(scenario())
    first, second, *more = handler.received
    assert not more and first["id"] == second["id"] and f'"id": "{job.id}"'.encode() in second["body"]


def test_a_key_that_comes_later_waits_for_a_slot_not_for_every_job_of_the_key_before_it(args):
    args = args.model_copy(update={"max_queued_jobs": 20, "max_jobs_per_key": 20})

    async def scenario():
        generator = FakeGenerator(replicas=0)  # nothing starts until a replica frees up
        jobs = await start_jobs(generator, args)
        jobs._dispatcher.set_slots("tiny", 2)  # what the controller says of 2 generators (no Serve here)
        first = [await jobs.submit(submission(f"a{i}", owner="key-a")) for i in range(6)]
        later = await jobs.submit(submission("b", owner="key-b"))
        cancelled = await jobs.cancel("key-a", first[-1].id)  # while it waits its turn
        in_serve = [running.job_id for running in jobs._dispatcher.running.values() if running.stream]
        positions = {job.prompt: (await jobs.get(job_owner(job), job.id)).queue_position for job in (*first, later)}
        generator.replicas.release()  # one replica, first come first served in Serve's queue
        done = [await until_finished(jobs, job, job_owner(job)) for job in (*first[:-1], later)]
        await jobs.__del__()
        return generator, first, in_serve, cancelled, positions, done

    def job_owner(job: Job) -> str:
        return "key-b" if job.prompt == "b" else "key-a"

    generator, first, in_serve, cancelled, positions, done = run(scenario())
    assert in_serve == [first[0].id, first[1].id]  # Serve holds its slots' worth, no more
    assert cancelled.status == "cancelled" and positions.pop("a5") is None
    # b took the first slot that freed; its position said so all along.
    assert list(generator.started) == ["a0", "a1", "b", "a2", "a3", "a4"]
    assert positions == {"a0": 1, "a1": 2, "b": 3, "a2": 4, "a3": 5, "a4": 6}
    assert [job.status for job in done] == ["completed"] * 6
