"""A Generator replica that is a gang of two ranks (`gpus_per_replica: 2`), on the test cluster as
two CPU processes over gloo, in an application of its own beside the service (whose replicas have
one rank each). With `parallelism: auto`, the guided `tiny` model's gang runs CFG parallel and the
unguided `tiny-turbo`'s runs Ulysses: each makes the video of a one-rank replica for the same
request and seed, names its parallelism in `details`, holds its ranks on one node, stops both at a
cancel, and fails its job as `replica_died` when a rank dies, and is replaced whole.

The tests share the one application and run in this order: the last one breaks it.

Tolerance: CFG parallel runs each pass of guidance as a batch of one, where one rank runs both as a batch of
two; Ulysses gives the matrix products half the rows, which a BLAS may sum in another order. Their
latents agree to within 1e-5 of their scale (tests/engine/test_parallel.py), but the MP4 encoder
turns a level's difference in a frame into larger ones nearby (these random weights make noise,
the hardest case): so frames are compared by their mean difference, which is well under a level
for the same video and 16-20 levels for another seed's."""

import time

import httpx
import numpy as np
import pytest
import ray
from support.apps import DeployedApp, kill_gang_rank, local_app, wait_running
from support.media import decoded_frames
from support.polling import poll
from support.service import API_KEYS, SLOW, SMALL, TEST_ARGS, submit, wait_for

from serve_app.deployments import GENERATOR, gang_rank_prefix, generator_name

APP = "gang"
BODY = {**SMALL, "seed": 11}
CASES = {  # model: (what details say, the request's body)
    "tiny": ({"cfg": 2, "ulysses": 1}, BODY),
    "tiny-turbo": ({"cfg": 1, "ulysses": 2}, {**BODY, "num_inference_steps": None, "model": "tiny-turbo"}),
}
# Mean difference of two frames, in levels of 255, under which two videos are the same one
# (measured: Ulysses 0.001, CFG parallel 0.9; another seed: 16-20).
SAME_VIDEO = 1.5
RANK = {"CPU": 0.01}  # the service's replicas hold the cluster's CPUs; a gang's ranks ask for almost none


@pytest.fixture(scope="module")
def gang(apps, service, tiny_cache, tmp_path_factory):
    """The local config's application under /gang, each model's Generator a gang of two ranks."""
    data = tmp_path_factory.mktemp(APP)
    app = local_app()
    app.update(name=APP, route_prefix=f"/{APP}")
    app["args"].update(TEST_ARGS, gpus_per_replica=2, cache_dir=str(tiny_cache), data_dir=str(data))
    for deployment in app["deployments"]:
        if deployment["name"].startswith(GENERATOR):
            # The options code gives (a bundle of one CPU a rank), made small; a fast replacement.
            deployment.update(
                ray_actor_options=dict(num_cpus=RANK["CPU"]), placement_group_bundles=[RANK, RANK],
                health_check_period_s=1, graceful_shutdown_timeout_s=5,
            )  # fmt: skip
    url = apps.deploy(app)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEYS[0]}"}, timeout=60) as http:
        yield DeployedApp(APP, url, http)
    apps.remove(APP)


def video(http, body) -> tuple[dict, np.ndarray]:
    job = wait_for(http, submit(http, **body)["id"])
    assert job["status"] == "completed", job
    return job, decoded_frames(http.get(f"/v1/videos/{job['id']}/content").content)


@pytest.mark.parametrize("model", CASES)
def test_a_gang_of_two_makes_the_video_of_one_rank(model, gang, client):
    parallelism, body = CASES[model]
    job, frames = video(gang.client, body)
    one_job, one_rank = video(client, body)
    assert job["details"]["parallelism"] == parallelism
    assert one_job["details"]["parallelism"] == {"cfg": 1, "ulysses": 1}
    assert frames.shape == one_rank.shape
    _, other_seed = video(client, {**body, "seed": body["seed"] + 1})
    assert mean_difference(frames, one_rank) <= SAME_VIDEO < 10 * SAME_VIDEO <= mean_difference(other_seed, one_rank)


def mean_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def test_each_gang_holds_its_ranks_on_one_node(gang):
    groups = [
        group for group in ray.util.placement_group_table().values()
        if group["strategy"] == "STRICT_PACK" and group["state"] == "CREATED"
    ]  # fmt: skip
    assert len(groups) == 2  # one replica of each model's Generator
    for group in groups:
        assert len(group["bundles"]) == 2 and len(set(group["bundles_to_node_id"].values())) == 1
    nodes = {node for group in groups for node in group["bundles_to_node_id"].values()}
    for model in CASES:
        (rank,) = gang_ranks(generator_name(model, default=model == "tiny"))
        assert ray.get(ray.get_actor(*rank).node.remote()) in nodes


def test_a_video_whose_sequence_the_ranks_cannot_share_evenly_is_refused_before_any_work(gang):
    # tiny-turbo's gang splits the sequence in two: 96x96x25 is 7 x 3 x 3 = 63 tokens.
    body = {**CASES["tiny-turbo"][1], "width": 96, "height": 96}
    refused = wait_for(gang.client, submit(gang.client, **body)["id"])
    assert refused["status"] == "failed" and refused["error"]["code"] == "invalid_request", refused
    assert "63 tokens" in refused["error"]["message"] and "multiple of 2" in refused["error"]["message"]
    # The ranks stayed in step: the gang makes the next video.
    assert video(gang.client, CASES["tiny-turbo"][1])[0]["status"] == "completed"


def test_a_cancel_stops_every_rank_at_the_same_step(gang):
    http = gang.client
    job = wait_for(http, submit(http, **SLOW)["id"], until=lambda j: j["progress"] > 0)
    cancelling = time.monotonic()
    assert http.post(f"/v1/videos/{job['id']}/cancel").status_code == 200
    assert wait_for(http, job["id"], timeout=30)["status"] == "cancelled"
    # Rank 0 stops only once every rank agrees, at a step's end: within seconds, not 100 steps.
    assert time.monotonic() - cancelling < 15
    # Both ranks stopped in step: the next job runs on both from its first collective, and comes out right.
    _, frames = video(http, BODY)
    _, again = video(http, BODY)
    assert np.array_equal(frames, again)


def test_a_dead_rank_fails_its_job_and_the_gang_is_replaced(gang):
    http = gang.client
    before = gang_ranks(GENERATOR)
    job = wait_for(http, submit(http, **SLOW)["id"], until=lambda j: j["progress"] > 0)
    kill_gang_rank(APP, GENERATOR, 1)

    failed = wait_for(http, job["id"], timeout=60)
    assert failed["status"] == "failed" and failed["error"]["code"] == "replica_died", failed
    # Its health check fails: Serve replaces rank 0, whose other rank comes with it.
    poll(lambda: gang_ranks(GENERATOR) not in (set(), before), timeout_s=120, what="a new gang")
    wait_running(APP, time.monotonic() + 120)
    assert video(http, BODY)[0]["details"]["parallelism"] == CASES["tiny"][0]


def gang_ranks(deployment: str) -> set[tuple[str, str]]:
    """The other ranks (here one) of the gang's replica of `deployment`: (name, namespace)."""
    prefix = gang_rank_prefix(APP, deployment)
    return {
        (actor["name"], actor["namespace"])
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(prefix)
    }
