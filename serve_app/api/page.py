"""The web page at `/` and the API's interactive docs at `/docs`, both self-contained (no CDN:
clusters are often offline): the page is one file, whose API calls carry the key the user types;
the docs are Swagger UI, served from the assets of the `swagger-ui-py` package."""

import importlib.util
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from serve_app.api.errors import NotFound
from serve_app.api.headers import page_csp

PAGE = files("serve_app.api").joinpath("static/index.html").read_text(encoding="utf-8")
PAGE_CSP = page_csp(PAGE)
# The package's static folder, found without importing it (its __init__ loads web frameworks).
_SWAGGER_UI = Path(importlib.util.find_spec("swagger_ui").submodule_search_locations[0]) / "static"
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
    csp = page_csp(html.body.decode(), img="'self' data:", style="'unsafe-inline' ")
    html.headers["Content-Security-Policy"] = csp
    return html


@page_router.get("/docs/assets/{name}")
async def docs_asset(name: str) -> FileResponse:
    if name not in _ASSETS:
        raise NotFound(f"No asset {name[:64]!r}.")
    return FileResponse(
        _SWAGGER_UI / name, media_type=_ASSETS[name], headers={"Cache-Control": "public, max-age=86400"}
    )
