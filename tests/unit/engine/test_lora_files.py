"""Adapter files on a replica's disk, from a local HTTP server (allow-listed 127.0.0.1): only
safetensors, never a pickle; a size cap, also on what the server does not declare; the address
checks at every redirect; the pinned SHA-256; one download for requests that want the same file at
once; a disk cache by SHA-256 that evicts the least recently used."""

import hashlib
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from safetensors.torch import save

from serve_app.common.outbound import OutboundPolicy
from serve_app.engine.errors import LoraRefused
from serve_app.engine.lora_files import LoraFiles, LoraPolicy
from serve_app.messages import LoraSource

LORA = save({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.ones(4, 24)})
OTHER = save({"transformer.blocks.0.attn1.to_k.lora_A.weight": torch.ones(4, 24)})
BIG = save({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.ones(4, 4096)})  # 64 KiB
ROUTES = {
    "/a.safetensors": LORA,
    "/b.safetensors": OTHER,
    "/big.safetensors": BIG,
    "/pickle.safetensors": pickle.dumps({"weights": [1, 2, 3]}),
}
ASKED: list[str] = []


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        ASKED.append(self.path)
        if self.path == "/to-metadata.safetensors":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/a.safetensors")
            self.end_headers()
            return
        body = ROUTES.get(self.path)
        if self.path == "/a.safetensors":
            time.sleep(0.2)  # long enough for concurrent requests to overlap
        self.send_response(200 if body else 404)
        if self.path != "/big.safetensors":  # a server that does not say how big
            self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def files(tmp_path, max_bytes: int = 16 * 1024, cache_bytes: int = 2**20, allow: bool = True) -> LoraFiles:
    policy = LoraPolicy(max_bytes=max_bytes, cache_bytes=cache_bytes, fetch_timeout_s=5)
    return LoraFiles(tmp_path, policy, OutboundPolicy(("127.0.0.1",) if allow else ()))


def url(server: str, name: str, sha256: str | None = None) -> LoraSource:
    return LoraSource(kind="url", location=f"{server}/{name}", sha256=sha256)


def refusal(lora_files: LoraFiles, source: LoraSource) -> str:
    with pytest.raises(LoraRefused) as refused:
        lora_files.get(source, "loras[0].path")
    assert refused.value.param == "loras[0].path"
    return refused.value.reason


def test_a_file_is_downloaded_once_then_served_from_the_cache_by_its_sha256(tmp_path, server):
    lora_files = files(tmp_path)
    ASKED.clear()
    with ThreadPoolExecutor(3) as pool:  # three requests at once for the same adapter
        found = list(pool.map(lambda _: lora_files.get(url(server, "a.safetensors"), "loras[0].path"), range(3)))
    assert ASKED == ["/a.safetensors"]
    assert {item.sha256 for item in found} == {hashlib.sha256(LORA).hexdigest()}
    assert found[0].path.read_bytes() == LORA and found[0].path.name == f"{found[0].sha256}.safetensors"
    # Another replica on this machine (another LoraFiles on the same folder) finds it too.
    files(tmp_path).get(url(server, "a.safetensors"), "loras[0].path")
    assert ASKED == ["/a.safetensors"]


def test_a_pickle_is_refused(tmp_path, server):
    assert "not a safetensors file" in refusal(files(tmp_path), url(server, "pickle.safetensors"))


def test_a_file_over_the_cap_is_refused_and_not_kept(tmp_path, server):
    assert "limit" in refusal(files(tmp_path), url(server, "big.safetensors"))
    assert list((tmp_path / "loras").glob("*.safetensors")) == []


def test_a_private_address_is_refused_also_after_a_redirect(tmp_path, server):
    assert "not allowed" in refusal(files(tmp_path, allow=False), url(server, "a.safetensors"))
    assert "not allowed" in refusal(files(tmp_path), url(server, "to-metadata.safetensors"))


def test_another_file_than_the_pinned_sha256_is_refused(tmp_path, server):
    assert "not the" in refusal(files(tmp_path), url(server, "a.safetensors", sha256="0" * 64))


def test_a_missing_file_is_refused_and_not_remembered_as_bad(tmp_path, server):
    with pytest.raises(LoraRefused) as refused:
        files(tmp_path).get(url(server, "missing.safetensors"), "loras[0].path")
    assert "could not be downloaded" in refused.value.reason and not refused.value.permanent


def test_the_cache_evicts_the_least_recently_used_file(tmp_path, server):
    lora_files = files(tmp_path, cache_bytes=len(LORA) + len(OTHER) - 1)  # room for one
    first = lora_files.get(url(server, "a.safetensors"), "loras[0].path")
    second = lora_files.get(url(server, "b.safetensors"), "loras[0].path")
    assert not first.path.exists() and second.path.exists()
    ASKED.clear()
    lora_files.get(url(server, "a.safetensors"), "loras[0].path")  # downloaded again
    assert ASKED == ["/a.safetensors"]


def test_a_registered_local_file_is_read_where_it_is(tmp_path):
    path = tmp_path / "local.safetensors"
    path.write_bytes(LORA)
    found = files(tmp_path).get(LoraSource(kind="path", location=str(path)), "loras[0].path")
    assert found.path == path and found.sha256 == hashlib.sha256(LORA).hexdigest()
    assert "missing" in refusal(files(tmp_path), LoraSource(kind="path", location=str(tmp_path / "gone.safetensors")))


class FakeHub:
    """The hub's API, which this machine cannot reach: a repo's files and their sizes."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def list_repo_files(self, repo, revision=None):
        return list(self.files)

    def get_paths_info(self, repo, paths, revision=None):
        return [type("Info", (), {"size": len(self.files[path])})() for path in paths]

    def download(self, repo, filename, revision=None, local_dir=None):
        target = local_dir / filename
        target.write_bytes(self.files[filename])
        return str(target)


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub

    fake = FakeHub({"README.md": b"", "style.safetensors": LORA, "big.safetensors": BIG})
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: fake)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake.download)
    # A public address, checked like any download (the real name needs DNS, which tests lack).
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "https://93.184.216.34")
    return fake


def test_a_hub_file_is_named_or_the_repos_only_safetensors_and_capped(tmp_path, hub):
    lora_files = files(tmp_path)
    named = lora_files.get(LoraSource(kind="hub", location="owner/repo/style.safetensors"), "loras[0].path")
    assert named.path.read_bytes() == LORA
    assert "2 .safetensors files" in refusal(lora_files, LoraSource(kind="hub", location="owner/repo"))
    del hub.files["big.safetensors"]
    only = files(tmp_path / "other").get(LoraSource(kind="hub", location="owner/repo"), "loras[0].path")
    assert only.sha256 == named.sha256
    hub.files["big.safetensors"] = BIG
    assert "limit" in refusal(lora_files, LoraSource(kind="hub", location="owner/repo/big.safetensors"))
