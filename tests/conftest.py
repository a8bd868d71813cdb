"""Session fixtures: one real local Ray cluster serving `serve_config.local.yaml` (tiny model,
CPU) on a free port, and a local image server for `image_url` tests."""

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
    "image_url_allowlist": ["127.0.0.1"],
}
SMALL = {"height": 64, "width": 64, "num_frames": 25, "num_inference_steps": 2}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
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
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def service(ray_cluster: None, image_server: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Deploys serve_config.local.yaml the way `serve run` does, with test caps and a free port."""
    from ray.serve._private import api as serve_private_api
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((ROOT / "serve_config.local.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"].update(TEST_ARGS, cache_dir=str(tmp_path_factory.mktemp("cache")))
    # Private API, but it is exactly what `serve run CONFIG` calls (ray/serve/scripts.py).
    schema = ServeDeploySchema.model_validate(config)
    client = serve_private_api.serve_start(http_options=schema.http_options.model_dump())
    client.deploy_apps(schema, _blocking=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while httpx.get(f"{url}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the local config never became ready"
        time.sleep(0.5)
    return url


@pytest.fixture(scope="session")
def client(service: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service, headers={"Authorization": f"Bearer {API_KEYS[0]}"}, timeout=120) as http:
        yield http
