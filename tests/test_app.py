"""Nothing is lost: a generator replica killed mid-job, an ingress replica killed mid-job, and
a restart of the whole application."""

import copy
import time

import httpx
import ray
from ray import serve
from support.service import SLOW, SMALL, submit, wait_for

from serve_app.benchmark.local_cluster import deploy_config


def kill_replica(deployment: str) -> None:
    """Kill the replica's worker process (ray.kill is a SIGKILL), as a crash or an OOM kill would."""
    (name,) = [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(f"SERVE_REPLICA::wan#{deployment}#")
    ]
    ray.kill(ray.get_actor(name, namespace="serve"))


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 120
    while httpx.get(f"{url}/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.5)


def test_a_killed_generator_fails_its_job_with_a_reason_and_is_replaced(client, service):
    job = submit(client, **SLOW)
    wait_for(client, job["id"], until=lambda j: j["progress"] > 0)
    kill_replica("Generator")

    failed = wait_for(client, job["id"], timeout=60)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "replica_died"
    assert "submit it again" in failed["error"]["message"]
    # Serve replaces the replica; the next job runs on the new one.
    time.sleep(1)
    wait_ready(service)
    assert wait_for(client, submit(client, **SMALL)["id"])["status"] == "completed"


def test_a_killed_ingress_loses_nothing(client, service):
    job = submit(client, **{**SLOW, "num_inference_steps": 30, "height": 128, "width": 128})
    kill_replica("Ingress")
    deadline = time.monotonic() + 60
    while True:  # until Serve has replaced the ingress
        try:
            if client.get(f"/v1/videos/{job['id']}").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert wait_for(client, job["id"])["status"] == "completed"


def test_a_restart_of_the_application_keeps_results_and_finishes_its_jobs(client, service, service_config):
    done = submit(client, seed=5, **SMALL)
    wait_for(client, done["id"])
    video = client.get(f"/v1/videos/{done['id']}/content").content
    running = submit(client, **SLOW)
    wait_for(client, running["id"], until=lambda j: j["progress"] > 0)
    queued = submit(client, **SMALL)

    # A graceful stop: the jobs replica follows the running job to its end and hands the queued
    # one over to its successor.
    serve.delete("wan")
    deploy_config(service_config)

    assert client.get(f"/v1/videos/{done['id']}/content").content == video
    assert done["id"] in [j["id"] for j in client.get("/v1/videos", params={"limit": 100}).json()["data"]]
    assert client.get(f"/v1/videos/{running['id']}").json()["status"] == "completed"
    assert wait_for(client, queued["id"])["status"] == "completed"


def test_a_crashed_jobs_replica_fails_its_running_job_and_requeues_the_rest(client, service):
    running = submit(client, **SLOW)
    wait_for(client, running["id"], until=lambda j: j["progress"] > 0)
    queued = submit(client, **SMALL)
    kill_replica("Jobs")

    # Its successor adopts the jobs once the dead replica's heartbeat is stale.
    interrupted = wait_for(client, running["id"], timeout=90)
    assert interrupted["status"] == "failed" and interrupted["error"]["code"] == "interrupted"
    assert wait_for(client, queued["id"], timeout=120)["status"] == "completed"


def test_a_rolling_update_of_the_whole_application_finishes_running_and_queued_jobs(client, service, service_config):
    running = submit(client, **SLOW)
    wait_for(client, running["id"], until=lambda j: j["progress"] > 0)
    queued = submit(client, **SMALL)
    # A new application argument replaces every replica of every deployment.
    updated = copy.deepcopy(service_config)
    updated["applications"][0]["args"]["retention_hours"] = 25
    try:
        deploy_config(updated)
        assert wait_for(client, running["id"])["status"] == "completed"
        assert wait_for(client, queued["id"])["status"] == "completed"
        assert wait_for(client, submit(client, **SMALL)["id"])["status"] == "completed"
    finally:
        deploy_config(service_config)


def test_a_rolling_update_of_the_generators_lets_the_running_job_finish(client, service, service_config):
    job = submit(client, **{**SLOW, "num_inference_steps": 40})
    wait_for(client, job["id"], until=lambda j: j["status"] == "in_progress")
    # A new actor option replaces every generator replica; Serve drains the old one first, for
    # up to its graceful_shutdown_timeout_s (60 s in the local config, longer than this job).
    updated = copy.deepcopy(service_config)
    generator = next(d for d in updated["applications"][0]["deployments"] if d["name"] == "Generator")
    generator["ray_actor_options"]["num_cpus"] = 0.5
    try:
        deploy_config(updated)
        done = wait_for(client, job["id"])
        assert done["status"] == "completed", done["error"]
        assert wait_for(client, submit(client, **SMALL)["id"])["status"] == "completed"
    finally:
        deploy_config(service_config)


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
