"""Fixtures shared by the tests: one real local Ray cluster for the whole session serving
`serve_config.local.yaml` (tiny model, CPU) on a free port, beside which a test can deploy an
application of its own (`apps`, `simulated_app`) or use one that the tests share and none breaks
(`shared_simulated_app`); the tiny checkpoint, built once; a local image server for `image_url`; a
throwaway PostgreSQL server. Helpers live in `support/`."""

import hashlib
import os
import sys

# TorchInductor's vectorised CPU kernels take half of a compilation's time here, and nothing the
# tests check depends on them (the graphs, recompilations, latents against eager): scalar kernels.
# And it compiles in the test's own process: a pool of compile workers (each importing torch) cost
# more CPU on 2 cores than it saved (the three `compiles` tests: 218 core-s, 185 without it).
# Set before torch reads them, and inherited by the processes the tests start.
os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "0")
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import yaml
from support.image_server import image_server as serve_images
from support.postgres import postgres_server
from support.service import API_KEYS, KEY_ID_SECRET, ROOT, TEST_ARGS, WEBHOOK_SECRET, wait_idle

from serve_app.benchmark.local_cluster import free_port, local_head

if TYPE_CHECKING:  # Ray is imported by the fixtures that start it, not by the unit tests
    from support.apps import Apps, DeployedApp

METRICS_PORT = free_port()  # the Ray node's Prometheus endpoint


@pytest.fixture(scope="session")
def image_server() -> Iterator[str]:
    """http://127.0.0.1:PORT serving good, bad and redirecting images."""
    with serve_images() as url:
        yield url


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    import ray
    from ray import serve

    # Replicas inherit the environment of the processes Ray starts here.
    os.environ["WAN_API_KEYS"] = ",".join(API_KEYS)
    os.environ.pop("WAN_API_KEYS_FILE", None)
    os.environ["WAN_KEY_ID_SECRET"] = KEY_ID_SECRET
    os.environ.pop("WAN_DATABASE_URL", None)
    os.environ["WAN_WEBHOOK_SECRET"] = WEBHOOK_SECRET
    # A CPU for each of the local config's two Generator replicas (one per model), and one for a
    # test's extra app.
    cluster = local_head(num_cpus=3, metrics_export_port=METRICS_PORT)
    ray.init(address=cluster.address, log_to_driver=False)
    yield
    serve.shutdown()
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def metrics_port() -> int:
    return METRICS_PORT


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The service's jobs database and results."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `cache_dir` of every tiny pipeline in the run: the checkpoint is built once, here."""
    return tmp_path_factory.mktemp("tiny-cache")


@pytest.fixture(scope="session")
def service_config(data_dir: Path, tiny_cache: Path) -> dict:
    """serve_config.local.yaml with test caps, temporary folders and a free port."""
    config = yaml.safe_load((ROOT / "serve_config.local.yaml").read_text())
    config["http_options"]["port"] = free_port()
    config["applications"][0]["args"].update(TEST_ARGS, cache_dir=str(tiny_cache), data_dir=str(data_dir))
    return config


@pytest.fixture(scope="session")
def apps(ray_cluster: None, service_config: dict) -> "Apps":
    """The applications deployed on the test cluster (the service, and those the tests add)."""
    from support.apps import Apps

    return Apps(service_config["http_options"])


@pytest.fixture(scope="session")
def service(apps: "Apps", image_server: str, service_config: dict) -> str:
    """The local config, deployed on the test cluster: its URL."""
    return apps.deploy(service_config["applications"][0])


def _simulated_app_name(item: pytest.Item) -> str:
    return "sim-" + hashlib.sha256(item.nodeid.encode()).hexdigest()[:10]


@pytest.fixture
def simulated_app(
    apps: "Apps", tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator["DeployedApp"]:
    """An application of this test's own beside the service, `model: simulated` (steps that sleep:
    a SLOW job takes seconds, and no CPU), with the test caps and a fast handover, under a route
    prefix of its own. A test may break it; it is deleted after the test."""
    from support.apps import DeployedApp

    name = _simulated_app_name(request.node)
    apps.deploy(apps.simulated(name, tmp_path_factory.mktemp(name)))
    headers = {"Authorization": f"Bearer {API_KEYS[0]}"}
    with httpx.Client(base_url=apps.url(name), headers=headers, timeout=60) as http:
        yield DeployedApp(name, apps.url(name), http)
    apps.remove(name)


@pytest.fixture(scope="session")
def _shared_simulated(apps: "Apps", tmp_path_factory: pytest.TempPathFactory) -> Iterator["DeployedApp"]:
    from support.apps import DeployedApp

    name = "sim-shared"
    # Its tests break nothing: no handover to hasten (its heartbeat's database work was about 8 core-s of a run).
    apps.deploy(apps.simulated(name, tmp_path_factory.mktemp(name), fast_handover=False, max_video_pixels=None))
    headers = {"Authorization": f"Bearer {API_KEYS[0]}"}
    with httpx.Client(base_url=apps.url(name), headers=headers, timeout=60) as http:
        yield DeployedApp(name, apps.url(name), http)
    apps.remove(name)


@pytest.fixture
def shared_simulated_app(_shared_simulated: "DeployedApp") -> Iterator["DeployedApp"]:
    """One application like `simulated_app`, but with no cap on a video's size, deployed once for
    the tests that fill its queue, cancel, stream events, but break nothing. Each test finds it
    idle: after each, every job of every test key must end (within 60 s), or that test errs."""
    yield _shared_simulated
    wait_idle(_shared_simulated.url, API_KEYS)


@pytest.fixture(scope="session")
def client(service: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service, headers={"Authorization": f"Bearer {API_KEYS[0]}"}, timeout=120) as http:
        yield http


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """The URL of a database on a throwaway PostgreSQL server, for the whole session."""
    with postgres_server() as url:
        yield url


# The groups that take longest, longest first (summed `--durations` of a run: 375, 147, 98, then
# 10-25 s each); every other module is shorter.
LONGEST_GROUPS = ("cluster", "test_local_cluster", "compiles", "test_handover", "test_benchmark", "test_adapters",
                  "test_speedups", "test_jobs", "test_memory", "test_parallel")  # fmt: skip
CLUSTER_FIXTURES = {"ray_cluster", "apps", "service", "client", "simulated_app", "shared_simulated_app"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the Ray cluster is an integration test, whatever its file says. For
    `--dist loadgroup`: every such test is in one group, so one worker holds the one cluster (two,
    each beside the multi-node clusters of the end-to-end tests, overloaded 2 cores), and every
    other module is a group of its own, so its module fixtures are made once. The tests that compile
    the tiny transformer (`compiles`) are one group too: one after another, each finds the graphs
    of those before it in the run's TorchInductor cache."""
    groups: dict[pytest.Item, str] = {}
    for item in items:
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
            groups[item] = "cluster"
        elif item.get_closest_marker("compiles"):
            groups[item] = "compiles"
        else:
            groups[item] = item.path.stem
        item.add_marker(pytest.mark.xdist_group(groups[item]))
    # xdist hands out the groups in the order they first appear (`--no-loadscope-reorder`): the
    # longest first, so that none starts late and both workers end with short ones (by default it
    # orders them by their number of tests, and the multi-node scenarios, two tests and mostly
    # waiting, ran last, beside the cluster worker's own waiting tests: 60-85 % of 2 cores busy).
    rank = {group: index for index, group in enumerate(LONGEST_GROUPS)}
    items.sort(key=lambda item: rank.get(groups[item], len(rank)))  # stable: each group keeps its order


def pytest_collection_finish(session: pytest.Session) -> None:
    """Refuse to run where pytest-xdist's `--dist loadgroup` no longer groups (it names a group by
    a suffix of the node id, which pytest 9.2 ignores): each worker would start a cluster."""
    if getattr(session.config.option, "loadgroup", False):  # set in the workers of `--dist loadgroup`
        ungrouped = [item.nodeid for item in session.items if item.get_closest_marker("xdist_group")
                     and "@" not in item.nodeid]  # fmt: skip
        if ungrouped:  # a worker's error is not shown, only that it crashed: say why on its stderr
            message = f"pytest-xdist did not group {ungrouped[0]} (and {len(ungrouped) - 1} more): pytest>=9.2?"
            print(message, file=sys.stderr)
            raise pytest.UsageError(message)
