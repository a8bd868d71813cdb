"""A local image server for `image_url`: good, bad, slow, compressed and redirecting images on
127.0.0.1, and what it was asked (a module of `support`, so that every test reads the one list
the server appends to)."""

import gzip
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from support.media import png_bytes

# Every path asked for, and the Accept-Encoding of each request, in order.
REQUESTED: list[str] = []
ACCEPT_ENCODINGS: list[str | None] = []


class _ImageHandler(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, str, bytes, dict]] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        REQUESTED.append(self.path)
        ACCEPT_ENCODINGS.append(self.headers.get("Accept-Encoding"))
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


@contextmanager
def image_server() -> Iterator[str]:
    """http://127.0.0.1:PORT, serving until the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    port = server.server_address[1]
    # A compression bomb: a few hundred bytes on the wire, 64 MiB once both layers are inflated.
    bomb = gzip.compress(gzip.compress(bytes(64 * 2**20)))
    _ImageHandler.routes = {
        "/cat.png": (200, "image/png", png_bytes((96, 64)), {}),
        "/slow.png": (200, "image/png", png_bytes((8, 8)), {}),
        "/notes.txt": (200, "text/plain", b"this is not an image", {}),
        "/huge.bin": (200, "image/png", os.urandom(2 * 2**20), {}),
        "/bomb.png": (200, "image/png", bomb, {"Content-Encoding": "gzip, gzip"}),
        "/to-cat": (302, "text/plain", b"", {"Location": "/cat.png"}),
        # 127.0.0.2 is loopback too, and not on the allow-list.
        "/to-loopback": (302, "text/plain", b"", {"Location": f"http://127.0.0.2:{port}/cat.png"}),
    }
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
