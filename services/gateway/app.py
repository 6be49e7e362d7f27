"""The gateway's HTTP application: RPC paths to connectrpc (Connect JSON or binary, binary
gRPC-web), the pages, the QR route and health, all behind Starlette's CORS middleware.

Routes (anything else is a plain 404):

    POST /healthcode.v1.<Service>/<Method>   the methods in relay.EXPOSED
    GET  /                                   links to the two pages
    GET  /person                             a person's page (sign in, register, declare, code)
    GET  /verifier                           a verifier's page (sign in, scan)
    GET  /static/<file>                      their scripts and style
    POST /qr?colour=green|yellow|red         the request body's code token as a QR code (SVG)
    GET  /healthz                            200 when every service behind answers SERVING
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import segno
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from services.gateway.config import GatewayConfig
from services.gateway.relay import Backends, applications

log = logging.getLogger("services.gateway")

STATIC = Path(__file__).parent / "static"

# What a browser on another allowed origin may send and read (STYLE.md: the Connect and
# gRPC-web headers; `authorization` for the bearer token).
ALLOWED_HEADERS = [
    "Authorization",
    "Content-Type",
    "Connect-Protocol-Version",
    "Connect-Timeout-Ms",
    "Grpc-Timeout",
    "X-Grpc-Web",
    "X-User-Agent",
    "Traceparent",
]
EXPOSED_HEADERS = ["Grpc-Status", "Grpc-Message", "Grpc-Status-Details-Bin"]

# The QR's dark modules in the code's colour (dark enough to scan on white: WCAG contrast > 4.5).
QR_COLOURS = {
    "green": "#0a6b2d",
    "yellow": "#8a6100",
    "red": "#b3141b",
    "none": "#222222",
}
# A code token: our prefix and base45 (QR alphanumeric mode), a few hundred characters.
_TOKEN = re.compile(r"[0-9A-Z $%*+\-./:]{1,1024}")

# Pages: scripts and styles from this origin only, QR images as blob URLs, calls to this origin.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _page(name: str) -> Any:
    async def page(_request: Request) -> Response:
        return FileResponse(STATIC / name, media_type="text/html", headers=_PAGE_HEADERS)

    return page


async def qr_code(request: Request) -> Response:
    """The token in the body as an SVG QR code in the code's colour. Nothing is stored or logged:
    the token is a holder's live code."""
    colour = request.query_params.get("colour", "none")
    if colour not in QR_COLOURS:
        return JSONResponse(
            {"message": f"colour: {colour!r}; use one of {', '.join(QR_COLOURS)}"}, 400
        )
    body = await request.body()
    token = body.decode("ascii", errors="replace").strip()
    if not _TOKEN.fullmatch(token):
        return JSONResponse(
            {"message": "the body should be a code token as Show returned it (HCN1:...)"}, 400
        )
    # Alphanumeric mode (base45 was chosen for it), medium error correction: a phone screen
    # with a crack or glare still scans.
    qr = segno.make(token, error="m", micro=False)
    out = io.BytesIO()
    qr.save(
        out,
        kind="svg",
        dark=QR_COLOURS[colour],
        light="#ffffff",
        scale=6,
        border=4,
        xmldecl=False,
        title="health code",
        unit=None,
    )
    return Response(
        out.getvalue(),
        media_type="image/svg+xml",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


def build_app(config: GatewayConfig, backends: Backends) -> ASGIApp:
    rpc = applications(backends, config.default_timeout_s, config.max_timeout_s)

    async def healthz(_request: Request) -> Response:
        statuses = await asyncio.gather(
            *(_backend_status(backends, name) for name in backends.addresses)
        )
        by_name = dict(zip(backends.addresses, statuses, strict=True))
        serving = all(s == "SERVING" for s in statuses)
        body = {"status": "SERVING" if serving else "NOT_SERVING", "services": by_name}
        return Response(json.dumps(body), 200 if serving else 503, media_type="application/json")

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        backends.open()
        log.info(
            "gateway relaying to %s; cross-origin calls allowed from %s",
            ", ".join(f"{n} {a}" for n, a in backends.addresses.items()),
            ", ".join(config.allowed_origins),
        )
        try:
            yield
        finally:
            await backends.close()

    pages = Starlette(
        routes=[
            Route("/", _page("index.html"), methods=["GET"]),
            Route("/person", _page("person.html"), methods=["GET"]),
            Route("/verifier", _page("verifier.html"), methods=["GET"]),
            Route("/qr", qr_code, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        lifespan=lifespan,
    )

    async def gateway(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            app = rpc.get(scope["path"])
            if app is not None:
                await app(scope, receive, send)
                return
        await pages(scope, receive, send)

    return CORSMiddleware(
        gateway,
        allow_origins=list(config.allowed_origins),
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=ALLOWED_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        # Bearer tokens travel in a header, never in cookies.
        allow_credentials=False,
        max_age=600,
    )


async def _backend_status(backends: Backends, name: str) -> str:
    try:
        stub = health_pb2_grpc.HealthStub(backends.channel(name))
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    except grpc.aio.AioRpcError as error:
        return str(error.code().name)
    except Exception as error:  # noqa: BLE001 - a probe says what it saw, never raises
        return type(error).__name__
