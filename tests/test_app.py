"""Nothing is lost: a generator replica killed mid-job, an ingress replica killed mid-job, a
crashed jobs replica, a restart of the whole application and rolling updates. Each test breaks an
application of its own (`simulated_app`: the real deployments, steps that sleep)."""

import time

import httpx
from ray import serve
from support.apps import kill_replica, wait_ready
from support.polling import poll
from support.service import SLOW, SMALL, submit, wait_for

from serve_app.deployments import GENERATOR, INGRESS, JOBS


def running(http: httpx.Client, job: dict) -> dict:
    return wait_for(http, job["id"], until=lambda j: j["progress"] > 0)


def test_a_killed_generator_fails_its_job_with_a_reason_and_is_replaced(simulated_app):
    http = simulated_app.client
    job = running(http, submit(http, **SLOW))
    kill_replica(simulated_app.name, GENERATOR)

    failed = wait_for(http, job["id"], timeout=60)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "replica_died"
    assert "submit it again" in failed["error"]["message"]
    # Serve replaces the replica; the next job runs on the new one.
    wait_ready(simulated_app.url)
    assert wait_for(http, submit(http, **SMALL)["id"])["status"] == "completed"


def test_a_killed_ingress_loses_nothing(simulated_app):
    http = simulated_app.client
    job = submit(http, **SLOW)
    kill_replica(simulated_app.name, INGRESS)

    def answers() -> bool:  # once Serve has replaced the ingress
        try:
            return http.get(f"/v1/videos/{job['id']}").status_code == 200
        except httpx.HTTPError:
            return False

    poll(answers, timeout_s=60, every_s=0.2, what="a new ingress")
    assert wait_for(http, job["id"])["status"] == "completed"


def test_a_restart_of_the_application_keeps_results_and_finishes_its_jobs(apps, simulated_app):
    http = simulated_app.client
    done = wait_for(http, submit(http, seed=5, **SMALL)["id"])
    video = http.get(f"/v1/videos/{done['id']}/content").content
    job = running(http, submit(http, **SLOW))
    queued = submit(http, **SMALL)

    # A graceful stop: the jobs replica follows the running job to its end and hands the queued
    # one over to its successor.
    app = apps.app(simulated_app.name)
    stopping = time.time()
    serve.delete(simulated_app.name)
    apps.deploy(app)

    assert http.get(f"/v1/videos/{done['id']}/content").content == video
    assert done["id"] in [j["id"] for j in http.get("/v1/videos", params={"limit": 100}).json()["data"]]
    finished = http.get(f"/v1/videos/{job['id']}").json()
    assert finished["status"] == "completed" and finished["completed_at"] >= int(stopping)
    assert wait_for(http, queued["id"])["status"] == "completed"


def test_a_crashed_jobs_replica_fails_its_running_job_and_requeues_the_rest(simulated_app):
    http = simulated_app.client
    job = running(http, submit(http, **SLOW))
    queued = submit(http, **SMALL)
    kill_replica(simulated_app.name, JOBS)

    # Its successor adopts the jobs once the dead replica's heartbeat is stale (jobs_silent_s).
    interrupted = wait_for(http, job["id"], timeout=60)
    assert interrupted["status"] == "failed" and interrupted["error"]["code"] == "interrupted"
    assert wait_for(http, queued["id"], timeout=60)["status"] == "completed"


def test_a_rolling_update_of_the_whole_application_finishes_running_and_queued_jobs(apps, simulated_app):
    http = simulated_app.client
    job = running(http, submit(http, **SLOW))
    queued = submit(http, **SMALL)
    # A new application argument replaces every replica of every deployment.
    updated = apps.app(simulated_app.name)
    updated["args"]["retention_hours"] = 25
    updating = time.time()
    apps.deploy(updated)
    done = wait_for(http, job["id"])
    # It ran through the update.
    assert done["status"] == "completed" and done["completed_at"] >= int(updating)
    assert wait_for(http, queued["id"])["status"] == "completed"
    assert wait_for(http, submit(http, **SMALL)["id"])["status"] == "completed"


def test_a_rolling_update_of_the_generators_lets_the_running_job_finish(apps, simulated_app):
    http = simulated_app.client
    job = running(http, submit(http, **SLOW))
    # A new actor option replaces every generator replica; Serve drains the old one first, for
    # up to its graceful_shutdown_timeout_s (60 s in the local config, longer than this job).
    updated = apps.app(simulated_app.name)
    generator = next(d for d in updated["deployments"] if d["name"] == GENERATOR)
    generator["ray_actor_options"]["num_cpus"] = 0.01
    updating = time.time()
    apps.deploy(updated)
    done = wait_for(http, job["id"])
    assert done["status"] == "completed", done["error"]
    assert done["completed_at"] >= int(updating)
    assert wait_for(http, submit(http, **SMALL)["id"])["status"] == "completed"


def test_each_job_runs_on_a_replica_that_holds_its_model(client):
    # One Generator deployment (here one replica) per model: the worker names it. tiny-turbo makes
    # its 3 steps (SMALL's 2 are outside its range), tiny SMALL's 2.
    body = {**SMALL, "num_inference_steps": None, "seed": 4}
    jobs = {"tiny-turbo": submit(client, **body, model="tiny-turbo"), "tiny": submit(client, **SMALL, seed=4)}
    finished = {model: wait_for(client, job["id"]) for model, job in jobs.items()}
    assert finished["tiny"]["worker"].startswith("Generator on ")
    assert finished["tiny-turbo"]["worker"].startswith("Generator-tiny-turbo on ")
    assert {job["details"]["model"] for job in finished.values()} == {"tiny", "tiny-turbo"}
    tiny, turbo = (client.get(f"/v1/videos/{finished[m]['id']}/content").content for m in ("tiny", "tiny-turbo"))
    assert tiny != turbo
