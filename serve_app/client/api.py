"""A small typed client for the service: `/predict` and the jobs API, with retries on 429/503
that honour `Retry-After`, and exceptions that carry the server's error code and message."""

import base64
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from serve_app.api.resources import Video, VideoList
from serve_app.messages import JobStatus

DEFAULT_URL = "http://127.0.0.1:8000"
_RETRIED = {429, 503}


class WanError(Exception):
    """An error answer of the service, or a job that ended without a video."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message, self.status, self.code, self.param = message, status, code, param

    def __str__(self) -> str:
        return f"{self.message} ({self.code})" if self.code else self.message


class WanClient:
    """`WanClient()` reads WAN_API_URL (default http://127.0.0.1:8000) and WAN_API_KEY."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 5,
    ) -> None:
        url = url or os.environ.get("WAN_API_URL") or DEFAULT_URL
        api_key = api_key or os.environ.get("WAN_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self._max_retries = max_retries

    def __enter__(self) -> "WanClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # The API.

    def models(self) -> list[dict[str, Any]]:
        """The served models (`GET /v1/models`), the default first: each one's id, defaults and limits."""
        models: list[dict[str, Any]] = self._request("GET", "/v1/models").json()["data"]
        return models

    def predict(self, prompt: str, *, image: str | Path | None = None, **params: Any) -> tuple[bytes, dict[str, Any]]:
        """The synchronous call of the hosted API: the MP4 bytes and the `details`. `params` are the
        body's other fields, `model="fastwan2.2-ti2v-5b"` among them (omitted: the default model), and
        `loras=["tiny-style", ("motion", 0.5)]` (names or (name, scale) pairs; see `lora_field`)."""
        body = self._body(prompt, image, params)
        response = self._request("POST", "/predict", json=body, timeout=httpx.Timeout(30.0, read=None))
        data = response.json()
        return base64.b64decode(data["video_base64"]), data["details"]

    def submit(
        self, prompt: str, *, image: str | Path | None = None, idempotency_key: str | None = None, **params: Any
    ) -> Video:
        """Queue a job (`params` as for `predict`, `model=` included). Retries reuse one
        Idempotency-Key, so they never queue it twice."""
        headers = {"Idempotency-Key": idempotency_key or secrets.token_urlsafe(16)}
        body = self._body(prompt, image, params)
        return Video.model_validate(self._request("POST", "/v1/videos", json=body, headers=headers).json())

    def get(self, job_id: str) -> Video:
        return Video.model_validate(self._request("GET", f"/v1/videos/{job_id}").json())

    def list_jobs(self, limit: int = 20, after: str | None = None) -> VideoList:
        params = {"limit": limit, **({"after": after} if after else {})}
        return VideoList.model_validate(self._request("GET", "/v1/videos", params=params).json())

    def cancel(self, job_id: str) -> Video:
        return Video.model_validate(self._request("POST", f"/v1/videos/{job_id}/cancel").json())

    def delete(self, job_id: str) -> None:
        self._request("DELETE", f"/v1/videos/{job_id}")

    def download(self, job_id: str, variant: str = "video") -> bytes:
        """The MP4, or with `variant="thumbnail"` the first frame as a JPEG."""
        return self._request("GET", f"/v1/videos/{job_id}/content", params={"variant": variant}).content

    def events(self, job_id: str) -> Iterator[Video]:
        """The job at each change, from its Server-Sent Events, until it has finished."""
        with self._http.stream("GET", f"/v1/videos/{job_id}/events", timeout=httpx.Timeout(30.0, read=None)) as resp:
            if resp.status_code != 200:
                resp.read()
                raise _error(resp)
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    yield Video.model_validate(json.loads(line.removeprefix("data: ")))

    def wait(self, job_id: str, on_progress: Callable[[Video], None] | None = None) -> Video:
        """Follow the job until it has finished, calling `on_progress` at each change. A dropped
        event stream is opened again."""
        while True:
            try:
                for job in self.events(job_id):
                    if on_progress:
                        on_progress(job)
                    if job.finished:
                        return job
            except httpx.TransportError:
                time.sleep(1)

    def generate(
        self, prompt: str, *, on_progress: Callable[[Video], None] | None = None, **params: Any
    ) -> tuple[Video, bytes]:
        """Submit, wait, download: the finished job and its MP4. Raises WanError if it failed."""
        job = self.wait(self.submit(prompt, **params).id, on_progress)
        if job.status != JobStatus.COMPLETED:
            message = job.error.message if job.error else f"the job was {job.status}"
            raise WanError(message, code=job.error.code if job.error else job.status)
        return job, self.download(job.id)

    # Plumbing.

    def _body(self, prompt: str, image: str | Path | None, params: dict[str, Any]) -> dict[str, Any]:
        body = {"prompt": prompt, **{k: v for k, v in params.items() if v is not None}}
        if "loras" in body:
            body["loras"] = [lora_field(lora) for lora in body["loras"]]
        if image is not None:
            if str(image).startswith(("http://", "https://")):
                body["image_url"] = str(image)
            else:
                body["image_base64"] = base64.b64encode(Path(image).read_bytes()).decode("ascii")
        return body

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self._max_retries + 1):
            response = self._http.request(method, path, **kwargs)
            if response.status_code not in _RETRIED or attempt == self._max_retries:
                break
            time.sleep(_retry_delay(response, attempt))
        if response.is_error:
            raise _error(response)
        return response


def lora_field(lora: str | tuple[str, float] | dict[str, Any]) -> dict[str, Any]:
    """One entry of `loras=`: a path (a registered name, a hub id, a URL), a (path, scale) pair,
    or the request's own `{"path": ..., "scale": ...}`."""
    if isinstance(lora, str):
        return {"path": lora}
    if isinstance(lora, tuple):
        path, scale = lora
        return {"path": path, "scale": scale}
    return lora


def _retry_delay(response: httpx.Response, attempt: int) -> float:
    """The server's Retry-After (in seconds) if it sent one, else exponential backoff."""
    retry_after = response.headers.get("retry-after", "")
    if retry_after.isascii() and retry_after.isdecimal() and len(retry_after) <= 6:
        return min(float(retry_after), 300.0)
    return min(0.5 * 2.0**attempt, 30.0)


def _error(response: httpx.Response) -> WanError:
    try:
        error = response.json()["error"]
        return WanError(error["message"], status=response.status_code, code=error.get("code"), param=error.get("param"))
    except (ValueError, KeyError, TypeError):
        return WanError(f"HTTP {response.status_code}: {response.text[:200]}", status=response.status_code)
