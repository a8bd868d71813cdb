"""The web page at `/` and the API's interactive docs at `/docs`, both self-contained (no CDN:
clusters are often offline). The page is one file, whose API calls carry the key the user types;
the server writes into it what the page must agree on with the API: the request's bounds and
defaults (from `VideoRequest`, whose bounds are `limits.py`'s) and the final job statuses. The
docs are Swagger UI, served from the assets of the `swagger-ui-py` package."""

import importlib.util
import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from serve_app.api.errors import NotFound
from serve_app.api.headers import page_csp
from serve_app.api.protocol import field_bounds
from serve_app.limits import MAX_SEED, MAX_TEXT_CHARS
from serve_app.messages import JobStatus


def server_values() -> dict[str, Any]:
    """What the page reads from its `server-values` script element."""
    return {
        "fields": field_bounds(),
        "max_text_chars": MAX_TEXT_CHARS,
        "max_seed": str(MAX_SEED),  # beyond JavaScript's exact integers: the page reads it as a BigInt
        "terminal_statuses": [status for status in JobStatus if status.is_terminal],
    }


def render(values: dict[str, Any]) -> str:
    """The page with `values` written in ("<" escaped: nothing in them can close the element)."""
    return _TEMPLATE.replace("{{ SERVER_VALUES }}", json.dumps(values).replace("<", "\\u003c"))


_TEMPLATE = files("serve_app.api").joinpath("static/index.html").read_text(encoding="utf-8")
PAGE = render(server_values())
# Its inline code by hash (the server values are JSON, not code: no hash needed).
PAGE_CSP = page_csp(PAGE)


def _package_folder(name: str) -> Path:
    """An installed package's folder, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"No package {name} is installed", name=name)
    return Path(spec.submodule_search_locations[0])


# Swagger UI's static folder (importing the package would load its web frameworks).
_SWAGGER_UI = _package_folder("swagger_ui") / "static"
_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon-32x32.png": "image/png"}

page_router = APIRouter(include_in_schema=False)


@page_router.get("/", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    return HTMLResponse(PAGE, headers={"Content-Security-Policy": PAGE_CSP})


@page_router.get("/docs", response_class=HTMLResponse)
async def docs(request: Request) -> HTMLResponse:
    html = get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} - docs",
        swagger_js_url="/docs/assets/swagger-ui-bundle.js",
        swagger_css_url="/docs/assets/swagger-ui.css",
        swagger_favicon_url="/docs/assets/favicon-32x32.png",
    )
    # Swagger UI sets inline styles as it renders; its script and data are ours.
    csp = page_csp(bytes(html.body).decode(), img="'self' data:", style="'unsafe-inline' ")
    html.headers["Content-Security-Policy"] = csp
    return html


@page_router.get("/docs/assets/{name}")
async def docs_asset(name: str) -> FileResponse:
    if name not in _ASSETS:
        raise NotFound(f"No asset {name[:64]!r}.")
    return FileResponse(
        _SWAGGER_UI / name, media_type=_ASSETS[name], headers={"Cache-Control": "public, max-age=86400"}
    )
