"""API keys: where they come from and how a request's bearer key is checked."""

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from fastapi import Request

from serve_app.api.errors import Unauthorized

ANONYMOUS = "anonymous"
KEYS_ENV, KEYS_FILE_ENV = "WAN_API_KEYS", "WAN_API_KEYS_FILE"
KEY_ID_SECRET_ENV = "WAN_KEY_ID_SECRET"


class ApiKeys:
    """The accepted keys, held only as HMAC-SHA256 digests under the server's secret: a key id (a
    digest prefix) in a log line, a metric or the database says nothing of a key, however weak,
    to whoever lacks the secret."""

    def __init__(self, keys: Iterable[str], secret: bytes) -> None:
        self._secret = secret
        self._digests = [self._digest(key) for key in keys]

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> "ApiKeys":
        """Keys from WAN_API_KEYS (comma-separated) and the file named by WAN_API_KEYS_FILE (one a
        line; blank lines and lines starting with `#` are not keys); the secret from WAN_KEY_ID_SECRET."""
        keys = environ.get(KEYS_ENV, "").split(",")
        keys_file = environ.get(KEYS_FILE_ENV)
        if keys_file:
            keys += [line for line in Path(keys_file).read_text().splitlines() if not line.strip().startswith("#")]
        return cls((key.strip() for key in keys if key.strip()), environ.get(KEY_ID_SECRET_ENV, "").encode())

    def __len__(self) -> int:
        return len(self._digests)

    @property
    def has_secret(self) -> bool:
        return bool(self._secret)

    def identify(self, key: str) -> str | None:
        """The key's id (a digest prefix, safe to log and store) if the key is accepted."""
        presented = self._digest(key)
        # Compare against every key, whatever matches, so timing says nothing about which.
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(presented, digest)
        return presented.hex()[:16] if matched else None

    def _digest(self, key: str) -> bytes:
        return hmac.new(self._secret, key.encode(), hashlib.sha256).digest()


def require_api_key(request: Request) -> str:
    """FastAPI dependency: the caller's key id, or 401. Reads headers only, never the body."""
    keys: ApiKeys | None = request.app.state.api_keys
    if keys is None:
        return ANONYMOUS
    header = request.headers.get("authorization")
    if not header:
        raise Unauthorized("Missing API key: send the header 'Authorization: Bearer YOUR_API_KEY'.")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("Malformed Authorization header: expected 'Bearer YOUR_API_KEY'.")
    key_id = keys.identify(key)
    if key_id is None:
        raise Unauthorized("Invalid API key.")
    return key_id
