"""The web page at `/`: one self-contained file (no CDN: clusters are often offline), whose API
calls carry the key the user types."""

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

_PAGE = files("serve_app.api").joinpath("static/index.html").read_text(encoding="utf-8")

page_router = APIRouter()


@page_router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse(_PAGE)
