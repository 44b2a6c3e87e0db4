"""The product's web page at `/`.

The page is static (gateway/static/index.html, app.js, app.css) apart from one JSON island
that tells it whether this node runs in development mode, where `archmesh-rt dev` mounts the
endpoints that mint tokens for any user and simulate workflows (archmesh_realtime/devtools.py);
every other node has no such routes.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.openapi import page

STATIC = Path(__file__).parent / "static"
_CONFIG_SLOT = "<!--archmesh-config-->"
# The page loads only its own files and talks only to its own origin (its WebSocket too).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    # A token given in the URL fragment never leaves the browser; keep the rest private too.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def page_routes(*, dev: bool, node: str) -> list[Route]:
    """`GET /`: the page, with the island that says whether this node runs `archmesh-rt dev`."""
    # `</` cannot occur in orjson output of these values, but escape as if it could.
    island = orjson.dumps({"dev": dev, "node": node}).decode().replace("</", "<\\/")
    body = (
        (STATIC / "index.html")
        .read_text(encoding="utf-8")
        .replace(
            _CONFIG_SLOT, f'<script type="application/json" id="archmesh-config">{island}</script>'
        )
    )

    @page
    async def index(_: Request) -> Response:
        return Response(body, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    return [Route("/", index, methods=["GET"])]
