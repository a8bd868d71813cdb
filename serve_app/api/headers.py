"""Security headers on every response: a Content-Security-Policy (the API's: nothing may load or
frame it; an HTML page's: only its own inline code, by hash, and its own origin), `nosniff`,
no referrer, and HSTS once the request came over TLS (through the proxy that terminates it)."""

import base64
import hashlib
import re

from fastapi import Request, Response

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
HSTS = "max-age=31536000; includeSubDomains"
_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


def page_csp(html: str, *, img: str = "'self' data: blob:", style: str = "") -> str:
    """The CSP of an HTML page that loads from its own origin only: its inline scripts and styles
    are allowed by their SHA-256, nothing else inline (no `unsafe-inline`)."""
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for kind, body in _INLINE.findall(html):
        hashes[kind].append("'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'")
    return (
        f"default-src 'none'; script-src 'self' {' '.join(hashes['script'])}; "
        f"style-src 'self' {style}{' '.join(hashes['style'])}; img-src {img}; media-src 'self' blob:; "
        "connect-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


def add_security_headers(request: Request, response: Response) -> None:
    """What every answer carries; a page that set its own CSP keeps it."""
    response.headers.setdefault("Content-Security-Policy", API_CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    # Over TLS only (a browser ignores HSTS over plain HTTP anyway); nginx says so in
    # X-Forwarded-Proto, which it sets itself, whatever the client sent.
    if request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https":
        response.headers["Strict-Transport-Security"] = HSTS
