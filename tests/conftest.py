"""Session fixtures: one real local Ray cluster serving `serve_config.local.yaml` (tiny model,
CPU) on a free port, and a local image server for `image_url` tests."""

import base64
import io
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import httpx
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
API_KEYS = ("test-key-one", "test-key-two")
# Small caps so that the over-the-limit tests stay small too.
TEST_ARGS = {
    "max_body_mb": 2,
    "max_image_mb": 1,
    "max_image_pixels": 4_000_000,
    "image_fetch_timeout_s": 3,
    "url_allowlist": ["127.0.0.1"],
    "sse_keepalive_s": 1,
    "webhook_retry_delays_s": [0.5, 0.5],
    "cors_origins": ["http://studio.example"],
    "max_queued_jobs": 6,
    "max_video_pixels": 256 * 256 * 121,
    "max_jobs_per_key": 5,
}
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"test webhook signing key").decode()
# The line of a load test report that says nothing went wrong.
NO_LOAD_TEST_FAILURES = "failures counted by Locust (HTTP errors, failed jobs, broken streams): 0"
# The stages a job reports in details.timings.
TIMINGS = {"queued_s", "text_encoding_s", "denoising_s", "decoding_s", "transfer_s", "encoding_s"}
SMALL = {"height": 64, "width": 64, "num_frames": 25, "num_inference_steps": 2}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


METRICS_PORT = free_port()  # the Ray node's Prometheus endpoint


def png_bytes(size: tuple[int, int], color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def probe_mp4(data: bytes) -> dict:
    """What a player sees in the file: codec, pixel format, size, rate, decoded frame count."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return {
            "format": container.format.name,
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "width": stream.width,
            "height": stream.height,
            "fps": float(stream.average_rate),
            "frames": frames,
            # +faststart: the index (moov) comes before the media data (mdat).
            "faststart": data.find(b"moov") < data.find(b"mdat"),
        }


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
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    import ray
    from ray import serve

    # Replicas inherit the environment of the processes Ray starts here.
    os.environ["WAN_API_KEYS"] = ",".join(API_KEYS)
    os.environ.pop("WAN_API_KEYS_FILE", None)
    os.environ["WAN_WEBHOOK_SECRET"] = WEBHOOK_SECRET
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _metrics_export_port=METRICS_PORT)
    yield
    serve.shutdown()
    ray.shutdown()


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


def deploy(config: dict) -> str:
    """Deploy a config the way `serve run` does; its URL once it is ready."""
    from ray.serve._private import api as serve_private_api
    from ray.serve.schema import ServeDeploySchema

    # Private API, but it is exactly what `serve run CONFIG` calls (ray/serve/scripts.py).
    schema = ServeDeploySchema.model_validate(config)
    client = serve_private_api.serve_start(http_options=schema.http_options.model_dump())
    client.deploy_apps(schema, _blocking=True)
    url = f"http://127.0.0.1:{config['http_options']['port']}"
    deadline = time.monotonic() + 120
    while httpx.get(f"{url}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the local config never became ready"
        time.sleep(0.5)
    return url


@pytest.fixture(scope="session")
def service(ray_cluster: None, image_server: str, service_config: dict) -> str:
    """The local config, deployed on the test cluster: its URL."""
    return deploy(service_config)


@pytest.fixture(scope="session")
def client(service: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service, headers={"Authorization": f"Bearer {API_KEYS[0]}"}, timeout=120) as http:
        yield http


# A job that denoises for seconds (100 steps) and would decode for many more: long enough to be
# cancelled, killed or queued behind while it runs.
SLOW = {"height": 256, "width": 256, "num_frames": 121, "num_inference_steps": 100}


def submit(client: httpx.Client, **body) -> dict:
    response = client.post("/v1/videos", json={"prompt": "a lighthouse in a storm", **body})
    assert response.status_code == 202, response.text
    return response.json()


def wait_for(client: httpx.Client, job_id: str, until=lambda job: job["status"] in FINISHED, timeout: float = 180):
    """Poll the job until `until(job)`; the job."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/videos/{job_id}").json()
        if until(job):
            return job
        assert time.monotonic() < deadline, f"job never got there: {job}"
        time.sleep(0.1)


FINISHED = {"completed", "failed", "cancelled"}
