"""Fixtures shared by the tests: one real local Ray cluster for the whole session serving
`serve_config.local.yaml` (tiny model, CPU) on a free port, a local image server for `image_url`,
and a throwaway PostgreSQL server. Helpers live in `support/`."""

import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from support.media import png_bytes
from support.postgres import postgres_server
from support.service import API_KEYS, ROOT, TEST_ARGS, WEBHOOK_SECRET

from serve_app.benchmark.local_cluster import deploy_config, free_port

METRICS_PORT = free_port()  # the Ray node's Prometheus endpoint


class _ImageHandler(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, str, bytes, dict]] = {}
    requested: list[str] = []  # every path asked for, in order

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.requested.append(self.path)
        if self.path == "/slow.png":
            time.sleep(6)
        status, content_type, body, headers = self.routes.get(self.path, (404, "text/plain", b"no", {}))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="session")
def image_server() -> Iterator[str]:
    """http://127.0.0.1:PORT serving good, bad and redirecting images."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    port = server.server_address[1]
    _ImageHandler.routes = {
        "/cat.png": (200, "image/png", png_bytes((96, 64)), {}),
        "/slow.png": (200, "image/png", png_bytes((8, 8)), {}),
        "/notes.txt": (200, "text/plain", b"this is not an image", {}),
        "/huge.bin": (200, "image/png", os.urandom(2 * 2**20), {}),
        "/to-cat": (302, "text/plain", b"", {"Location": "/cat.png"}),
        # 127.0.0.2 is loopback too, and not on the allow-list.
        "/to-loopback": (302, "text/plain", b"", {"Location": f"http://127.0.0.2:{port}/cat.png"}),
    }
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    import ray
    from ray import serve

    # Replicas inherit the environment of the processes Ray starts here.
    os.environ["WAN_API_KEYS"] = ",".join(API_KEYS)
    os.environ.pop("WAN_API_KEYS_FILE", None)
    os.environ.pop("WAN_DATABASE_URL", None)
    os.environ["WAN_WEBHOOK_SECRET"] = WEBHOOK_SECRET
    # A CPU for each of the local config's two Generator replicas (one per model), and one for a
    # test's extra app or a rolling update.
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, _metrics_export_port=METRICS_PORT)
    yield
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def metrics_port() -> int:
    return METRICS_PORT


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The service's jobs database and results."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def service_config(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """serve_config.local.yaml with test caps, temporary folders and a free port."""
    config = yaml.safe_load((ROOT / "serve_config.local.yaml").read_text())
    config["http_options"]["port"] = free_port()
    config["applications"][0]["args"].update(
        TEST_ARGS, cache_dir=str(tmp_path_factory.mktemp("cache")), data_dir=str(data_dir)
    )
    return config


@pytest.fixture(scope="session")
def service(ray_cluster: None, image_server: str, service_config: dict) -> str:
    """The local config, deployed on the test cluster: its URL."""
    return deploy_config(service_config)


@pytest.fixture(scope="session")
def client(service: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service, headers={"Authorization": f"Bearer {API_KEYS[0]}"}, timeout=120) as http:
        yield http


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """The URL of a database on a throwaway PostgreSQL server, for the whole session."""
    with postgres_server() as url:
        yield url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the Ray cluster is an integration test, whatever its file says."""
    for item in items:
        if {"ray_cluster", "service", "client"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
