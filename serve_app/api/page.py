"""The web page at `/`: one self-contained file (no CDN: clusters are often offline), whose API
calls carry the key the user types. The server writes into it what the page must agree on with
the API: the request's bounds and defaults (from `VideoRequest`, whose bounds are `limits.py`'s)
and the final job statuses."""

import json
from importlib.resources import files
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from serve_app.api.protocol import VideoRequest
from serve_app.limits import MAX_SEED, MAX_TEXT_CHARS
from serve_app.messages import JobStatus

_BOUNDS = ("minimum", "maximum", "default", "maxLength")


def server_values() -> dict[str, Any]:
    """What the page reads from its `server-values` script element."""
    fields = VideoRequest.model_json_schema()["properties"]
    return {
        "fields": {name: {k: v for k, v in field.items() if k in _BOUNDS} for name, field in fields.items()},
        "max_text_chars": MAX_TEXT_CHARS,
        "max_seed": str(MAX_SEED),  # beyond JavaScript's exact integers: the page reads it as a BigInt
        "terminal_statuses": [status for status in JobStatus if status.is_terminal],
    }


def render(values: dict[str, Any]) -> str:
    """The page with `values` written in ("<" escaped: nothing in them can close the element)."""
    return _TEMPLATE.replace("{{ SERVER_VALUES }}", json.dumps(values).replace("<", "\\u003c"))


_TEMPLATE = files("serve_app.api").joinpath("static/index.html").read_text(encoding="utf-8")
_PAGE = render(server_values())

page_router = APIRouter()


@page_router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse(_PAGE)
