"""Relaying browser calls to the services: one long-lived gRPC channel per service, the caller's
bearer token and deadline passed on, and the service's error (status, message and every
google.rpc detail, ErrorInfo's reason among them) handed back as it came.

The methods a browser may call are listed in `EXPOSED`; any other path is a plain 404 at the
gateway, whatever the services behind it serve. Whether the caller may call a listed method is
the service's decision (services/_common/access.py): the gateway has no role of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError, ErrorDetail
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication
from google.protobuf.message import Message
from google.rpc import status_pb2
from healthcode.v1 import (
    account_connect,
    colour_connect,
    consent_connect,
    declaration_connect,
    display_connect,
)
from protobuf.wkt import Any as ConnectAny

from services._common.auth import Security, balanced
from services._common.config import RECONNECT_OPTIONS

log = logging.getLogger("services.gateway")

_ACCOUNT = "healthcode.v1.AccountService"
_DECLARATION = "healthcode.v1.DeclarationService"
_COLOUR = "healthcode.v1.ColourService"
_DISPLAY = "healthcode.v1.DisplayService"
_CONSENT = "healthcode.v1.ConsentService"

# Which service answers each service name (AccountService lives in the declaration service).
BACKEND_OF = {
    _ACCOUNT: "declaration",
    _DECLARATION: "declaration",
    _COLOUR: "colour",
    _DISPLAY: "display",
    _CONSENT: "declaration",
}

# What a browser needs: signing in (people by SMS code, verifiers with their account), a person's
# registration, declaration and mandates (a family member acting for a relative), showing and
# scanning codes, the reasons behind one's own colour, and which partners looked one up (with
# withdrawing and restoring a partner's access; CheckPartnerAccess is the display's, not a page's).
EXPOSED: frozenset[str] = frozenset(
    f"/{service}/{method}"
    for service, methods in {
        _ACCOUNT: ("RequestSignInCode", "SignIn", "SignInStaff"),
        _DECLARATION: (
            "Register",
            "Declare",
            "GetPerson",
            "GrantMandate",
            "RevokeMandate",
            "ListMandates",
        ),
        _DISPLAY: ("Show", "Scan", "GetVerificationKey"),
        _COLOUR: ("Explain",),
        _CONSENT: ("ListPartnerAccess", "RevokePartnerAccess", "RestorePartnerAccess"),
    }.items()
    for method in methods
)

# grpc's status names where Connect spells them differently.
_CONNECT_CODE = {"CANCELLED": Code.CANCELED}
_DETAILS_KEY = "grpc-status-details-bin"
# Request headers passed on as gRPC metadata: the bearer token, and a browser's trace context so
# that the services' spans join its trace.
_RELAYED_HEADERS = ("authorization", "traceparent", "tracestate")


def connect_code(code: grpc.StatusCode) -> Code:
    return _CONNECT_CODE.get(code.name) or Code.__members__.get(code.name, Code.UNKNOWN)


def connect_error(error: grpc.aio.AioRpcError) -> ConnectError:
    """The service's error as Connect and gRPC-web carry it: same code, same message, and every
    google.rpc detail (ErrorInfo, BadRequest, PreconditionFailure, ...) byte for byte."""
    details: list[ErrorDetail] = []
    for key, value in error.trailing_metadata() or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            details = [
                ErrorDetail(ConnectAny(type_url=d.type_url, value=d.value)) for d in status.details
            ]
    message = error.details() or ""
    if error.code() == grpc.StatusCode.UNAVAILABLE and not details:
        # The transport's own words name internal addresses; a browser gets what to do instead.
        message = "the service is unavailable for a moment: try again in a few seconds"
    return ConnectError(connect_code(error.code()), message, details)


@dataclass
class Backends:
    """One channel per service, opened when the gateway starts and closed when it stops; grpc
    reconnects a channel by itself (within a second: RECONNECT_OPTIONS) after a service restart."""

    addresses: Mapping[str, str]
    security: Security | None
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)

    def open(self) -> None:
        # grpc.aio channels belong to the event loop they are made in: call from the server's.
        for name, address in self.addresses.items():
            options = balanced(address, RECONNECT_OPTIONS)
            if self.security is None:
                channel = grpc.aio.insecure_channel(address, options=options)
            else:
                channel = grpc.aio.secure_channel(
                    address, self.security.channel_credentials(), options=options
                )
            self.channels[name] = channel

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()
        self.channels.clear()

    def channel(self, name: str) -> grpc.aio.Channel:
        try:
            return self.channels[name]
        except KeyError:
            raise ConnectError(Code.UNAVAILABLE, "the gateway is starting or stopping") from None


Handler = Callable[[Message, RequestContext[Any, Any]], Awaitable[Message]]


class Relay:
    """Stands in for one service's implementation in connectrpc's generated application: every
    method it is asked for forwards the call to the service behind it."""

    def __init__(
        self,
        service_name: str,
        backends: Backends,
        default_timeout_s: float,
        max_timeout_s: float,
    ) -> None:
        self._service = service_name
        self._backend = BACKEND_OF[service_name]
        self._backends = backends
        self._default_timeout_s = default_timeout_s
        self._max_timeout_s = max_timeout_s
        self._calls: dict[str, Any] = {}

    def __getattr__(self, _snake_name: str) -> Handler:
        # The generated code asks for `svc.show`, `svc.sign_in`, ...; the method itself comes
        # with each call (ctx.method), so one handler serves them all.
        return self.forward

    def _timeout_s(self, ctx: RequestContext[Any, Any]) -> float:
        remaining_ms = ctx.timeout_ms
        if remaining_ms is None:
            return self._default_timeout_s
        if remaining_ms <= 0:
            raise ConnectError(Code.DEADLINE_EXCEEDED, "the call's deadline passed at the gateway")
        return min(remaining_ms / 1000.0, self._max_timeout_s)

    def _multicallable(self, path: str, response_type: type[Message]) -> Any:
        call = self._calls.get(path)
        if call is None:
            call = self._backends.channel(self._backend).unary_unary(
                path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_type.FromString,
            )
            self._calls[path] = call
        return call

    async def forward(self, request: Message, ctx: RequestContext[Any, Any]) -> Message:
        method = ctx.method
        path = f"/{method.service_name}/{method.name}"
        headers = ctx.request_headers
        metadata = tuple(
            (name, value) for name in _RELAYED_HEADERS if (value := headers.get(name)) is not None
        )
        call = self._multicallable(path, cast(type[Message], method.output))
        started = time.monotonic()
        try:
            reply = await call(request, metadata=metadata, timeout=self._timeout_s(ctx))
        except grpc.aio.AioRpcError as error:
            # What went wrong, never the request (it may hold an ID or phone number).
            log.info(
                "%s -> %s: %s",
                path,
                self._backend,
                error.code().name,
                extra={"elapsed_ms": round((time.monotonic() - started) * 1000, 1)},
            )
            raise connect_error(error) from None
        log.debug("%s -> %s: OK", path, self._backend)
        return cast(Message, reply)


def applications(
    backends: Backends, default_timeout_s: float, max_timeout_s: float
) -> dict[str, ConnectASGIApplication[Any]]:
    """The connectrpc ASGI application answering each exposed path."""

    def relay(service: str) -> Any:
        return Relay(service, backends, default_timeout_s, max_timeout_s)

    apps: list[ConnectASGIApplication[Any]] = [
        account_connect.AccountServiceASGIApplication(relay(_ACCOUNT)),
        declaration_connect.DeclarationServiceASGIApplication(relay(_DECLARATION)),
        colour_connect.ColourServiceASGIApplication(relay(_COLOUR)),
        display_connect.DisplayServiceASGIApplication(relay(_DISPLAY)),
        consent_connect.ConsentServiceASGIApplication(relay(_CONSENT)),
    ]
    by_service = {app.path.lstrip("/"): app for app in apps}
    return {path: by_service[path.split("/")[1]] for path in sorted(EXPOSED)}
