"""LoRA adapter files on a Generator replica's disk: a local file of the registry, the locally
built `tiny-style`, or one downloaded (from the hub or an https URL, through `common.outbound`'s
checks, at every redirect) into a cache keyed by SHA-256 with a least-recently-used size cap.

Only safetensors, never a pickle: a file whose header is not safetensors' is refused, as is one
over `max_bytes`. Replicas that share the cache folder download a file once: a lock file per
source serialises them, and the second finds the first one's copy."""

import asyncio
import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
from filelock import FileLock
from safetensors import safe_open

from serve_app.common.outbound import OutboundPolicy, OutboundRefused, checked_get
from serve_app.engine.errors import LoraRefused
from serve_app.engine.tiny import ensure_tiny_lora
from serve_app.messages import LoraSource

logger = logging.getLogger(__name__)

SUFFIX = ".safetensors"
_MAX_REDIRECTS = 3
_CHUNK = 2**20


@dataclass(frozen=True)
class LoraFile:
    path: Path
    sha256: str


@dataclass(frozen=True)
class LoraPolicy:
    """Limits on adapter files, from the app arguments."""

    max_bytes: int
    cache_bytes: int
    fetch_timeout_s: float


class LoraFiles:
    """Gets adapter files to this machine's disk; call from a worker thread (it blocks)."""

    def __init__(self, cache_dir: Path, policy: LoraPolicy, outbound: OutboundPolicy) -> None:
        self._cache_dir = Path(cache_dir)
        self._dir = self._cache_dir / "loras"
        self._policy = policy
        self._outbound = outbound
        self._hashes: dict[tuple[str, int, int], str] = {}  # a local file (path, size, mtime) -> SHA-256
        self._valid: set[str] = set()  # the SHA-256 of files already checked (size, safetensors)

    def get(self, source: LoraSource, param: str) -> LoraFile:
        """The adapter's file, checked (size, safetensors, the pinned SHA-256), or LoraRefused."""
        if source.kind in ("url", "hub"):
            found = self._downloaded(source, param)
        else:
            path = ensure_tiny_lora(self._cache_dir) if source.kind == "tiny" else Path(source.location).expanduser()
            if not path.is_file():
                raise LoraRefused(param, "the registered adapter file is missing on this server.")
            found = LoraFile(path, self._sha256_of_local(path))
        self._check(found, source, param)
        return found

    def _check(self, found: LoraFile, source: LoraSource, param: str) -> None:
        if source.sha256 is not None and found.sha256 != source.sha256:
            raise LoraRefused(param, f"the file's SHA-256 is {found.sha256}, not the {source.sha256} registered.")
        if found.sha256 in self._valid:  # the same bytes: checked when first used, not at every request
            return
        size = found.path.stat().st_size
        if size > self._policy.max_bytes:
            raise LoraRefused(param, f"the file is {size} bytes, over this server's {self._policy.max_bytes} limit.")
        try:
            with safe_open(str(found.path), framework="pt"):
                pass
        except Exception:  # safetensors raises its own types, and OSError
            raise LoraRefused(param, "the file is not a safetensors file (pickles are never loaded).") from None
        self._valid.add(found.sha256)

    def _sha256_of_local(self, path: Path) -> str:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._hashes:
            self._hashes[key] = _sha256(path)
        return self._hashes[key]

    def _downloaded(self, source: LoraSource, param: str) -> LoraFile:
        key = hashlib.sha256(source.model_dump_json().encode()).hexdigest()
        index = self._dir / "sources" / key
        index.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self._dir / "sources" / f"{key}.lock"):
            cached = self._cached(index)
            if cached is not None:
                return cached
            staging = Path(tempfile.mkdtemp(prefix=".download-", dir=self._dir))
            try:
                path = self._download(source, staging, param)
                sha256 = _sha256(path)
                target = self._dir / f"{sha256}{SUFFIX}"
                os.replace(path, target)
                index.write_text(sha256)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        self._evict(keep=target)
        return LoraFile(target, sha256)

    def _cached(self, index: Path) -> LoraFile | None:
        if not index.exists():
            return None
        sha256 = index.read_text().strip()
        path = self._dir / f"{sha256}{SUFFIX}"
        if not path.exists():  # evicted since
            return None
        os.utime(path)  # used now: the last to be evicted
        return LoraFile(path, sha256)

    def _evict(self, keep: Path) -> None:
        """Remove the least recently used files while the cache is over its cap."""
        files = sorted(self._dir.glob(f"*{SUFFIX}"), key=lambda path: path.stat().st_mtime)
        total = sum(path.stat().st_size for path in files)
        for path in files:
            if total <= self._policy.cache_bytes:
                break
            if path != keep:
                total -= path.stat().st_size
                path.unlink(missing_ok=True)
                logger.info("LoRA cache: evicted %s", path.name)

    def _download(self, source: LoraSource, staging: Path, param: str) -> Path:
        try:
            if source.kind == "url":
                target = staging / f"download{SUFFIX}"
                fetch = self._fetch_url(source.location, target, param)
                asyncio.run(asyncio.wait_for(fetch, self._policy.fetch_timeout_s))
                return target
            return self._fetch_hub(source, staging, param)
        except LoraRefused:
            raise
        except OutboundRefused as exc:
            raise LoraRefused(param, exc.message.removeprefix(f"{param} ")) from None
        except Exception as exc:
            logger.info("%s: %s not downloaded: %r", param, source.location, exc)
            raise LoraRefused(param, "the adapter could not be downloaded.", permanent=False) from None

    async def _fetch_url(self, url: str, target: Path, param: str) -> None:
        headers = {"Accept-Encoding": "identity"}  # the bytes as stored, capped as they come
        async with checked_get(self._outbound, url, param, headers, _MAX_REDIRECTS) as response:
            response.raise_for_status()
            await self._write_capped(response, target, param)

    async def _write_capped(self, response: httpx.Response, target: Path, param: str) -> None:
        limit = self._policy.max_bytes
        written = 0
        with target.open("wb") as out:
            async for chunk in response.aiter_raw(_CHUNK):
                written += len(chunk)
                if written > limit:
                    raise LoraRefused(param, f"the file is over this server's {limit} byte limit.")
                out.write(chunk)

    def _fetch_hub(self, source: LoraSource, staging: Path, param: str) -> Path:
        from huggingface_hub import HfApi, constants, hf_hub_download

        asyncio.run(self._outbound.check(constants.ENDPOINT, param))
        owner, name, *rest = source.location.split("/", 2)
        repo, filename = f"{owner}/{name}", rest[0] if rest else ""
        api = HfApi()
        if not filename:
            files = [name for name in api.list_repo_files(repo, revision=source.revision) if name.endswith(SUFFIX)]
            if len(files) != 1:
                raise LoraRefused(param, f"{repo} has {len(files)} .safetensors files: name one (owner/repo/file).")
            filename = files[0]
        (info,) = api.get_paths_info(repo, [filename], revision=source.revision)
        size = getattr(info, "size", None) or 0
        if size > self._policy.max_bytes:
            raise LoraRefused(param, f"the file is {size} bytes, over this server's {self._policy.max_bytes} limit.")
        return Path(hf_hub_download(repo, filename, revision=source.revision, local_dir=staging))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
