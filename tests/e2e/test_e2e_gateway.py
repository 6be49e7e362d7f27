"""The browser gateway in front of the real services (services/gateway, issue 11 item 2): Connect
JSON and binary gRPC-web calls through it, CORS, the services' errors relayed intact (status,
message, ErrorInfo reason), no token no call, and nothing but the exposed methods."""

from __future__ import annotations

import base64
import json
import struct
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from healthcode.v1 import (
    account_pb2,
    account_pb2_grpc,
    common_pb2,
    declaration_pb2,
    declaration_pb2_grpc,
    display_pb2,
)

from clients import feedgen
from clients.channel import open_channel
from clients.stack import Stack
from services.gateway.relay import Relay, connect_code
from tests.e2e.waits import eventually

HOLDER, STRANGER = feedgen.synthetic_id_numbers(2, 1111)
HOLDER_PHONE = "13700137011"
VERIFIER, VERIFIER_PASSWORD = "gate-7", "a long gate password"


# --- talking to the gateway as a browser does ---------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"{}")


def http(
    stack: Stack, path: str, body: bytes | None, headers: dict[str, str], method: str = "POST"
) -> Reply:
    request = urllib.request.Request(
        stack.gateway_url + path, data=body, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())


def connect(stack: Stack, method: str, body: dict[str, Any], token: str | None = None) -> Reply:
    """A Connect unary call with a JSON body, as the pages make it with fetch."""
    headers = {
        "Content-Type": "application/json",
        "Connect-Protocol-Version": "1",
        "Connect-Timeout-Ms": "10000",
    }
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return http(stack, f"/healthcode.v1.{method}", json.dumps(body).encode(), headers)


def connect_reason(reply: Reply) -> str:
    """The ErrorInfo reason of a Connect error body (details are base64 google.protobuf.Any)."""
    for detail in reply.json().get("details", []):
        if detail["type"] == "google.rpc.ErrorInfo":
            raw = detail["value"] + "=" * (-len(detail["value"]) % 4)
            return str(error_details_pb2.ErrorInfo.FromString(base64.b64decode(raw)).reason)
    return ""


@dataclass
class GrpcWebReply:
    http_status: int
    messages: list[bytes]
    trailers: dict[str, str] = field(default_factory=dict)

    @property
    def grpc_status(self) -> int:
        return int(self.trailers["grpc-status"])

    def reason(self) -> str:
        raw = self.trailers.get("grpc-status-details-bin", "")
        status = status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return str(info.reason)
        return ""


def grpc_web(stack: Stack, method: str, message: Message, token: str | None) -> GrpcWebReply:
    """A binary gRPC-web call: one length-prefixed message; the reply's data frames and its
    trailer frame (flag 0x80), which carries the status even when HTTP says 200."""
    payload = message.SerializeToString()
    headers = {
        "Content-Type": "application/grpc-web+proto",
        "X-Grpc-Web": "1",
        "Grpc-Timeout": "10S",
    }
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = struct.pack(">BI", 0, len(payload)) + payload
    reply = http(stack, f"/healthcode.v1.{method}", body, headers)
    out = GrpcWebReply(reply.status, [])
    data = reply.body
    while data:
        flag, length = struct.unpack(">BI", data[:5])
        frame, data = data[5 : 5 + length], data[5 + length :]
        if flag & 0x80:
            for line in frame.decode().split("\r\n"):
                if line:
                    key, _, value = line.partition(":")
                    out.trailers[key.strip().lower()] = value.strip()
        else:
            out.messages.append(frame)
    # A trailers-only reply puts the status in the HTTP headers instead.
    for key in ("grpc-status", "grpc-message", "grpc-status-details-bin"):
        if key in reply.headers and key not in out.trailers:
            out.trailers[key] = reply.headers[key]
    return out


# --- the people and staff of this module ----------------------------------------------------


def register(stack: Stack, id_number: str, phone: str) -> None:
    """Registered through the declaration service as the operator's CLI does."""
    with open_channel(stack.peers.declaration) as channel:
        declaration_pb2_grpc.DeclarationServiceStub(channel).Register(
            declaration_pb2.RegisterRequest(
                actor=common_pb2.Actor(
                    role=common_pb2.ACTOR_ROLE_CITIZEN,
                    person=common_pb2.PersonRef(id_number=id_number),
                ),
                name="李四",
                id_number=id_number,
                phones=[phone],
            )
        )


def sign_in(stack: Stack, id_number: str, phone: str) -> str:
    sent = connect(
        stack, "AccountService/RequestSignInCode", {"idNumber": id_number, "phone": phone}
    )
    assert sent.status == 200, sent.body
    code = sent.json()["developmentCode"]
    signed = connect(stack, "AccountService/SignIn", {"idNumber": id_number, "code": code})
    assert signed.status == 200, signed.body
    return str(signed.json()["token"])


def verifier_token(stack: Stack) -> str:
    with open_channel(stack.peers.declaration) as channel:
        account_pb2_grpc.AccountServiceStub(channel).CreateStaffAccount(
            account_pb2.CreateStaffAccountRequest(
                principal=VERIFIER,
                role=account_pb2.STAFF_ROLE_VERIFIER,
                context="venue",
                password=VERIFIER_PASSWORD,
            )
        )
    signed = connect(
        stack, "AccountService/SignInStaff", {"principal": VERIFIER, "password": VERIFIER_PASSWORD}
    )
    assert signed.status == 200, signed.body
    return str(signed.json()["token"])


@pytest.fixture(scope="module")
def holder_token(module_stack: Stack) -> str:
    register(module_stack, HOLDER, HOLDER_PHONE)
    return sign_in(module_stack, HOLDER, HOLDER_PHONE)


def show(stack: Stack, token: str) -> Reply:
    """The holder's code through Connect, once the display knows them (a registration reaches the
    display's replica within moments)."""
    return eventually(
        "the holder's code through the gateway",
        lambda: connect(
            stack,
            "DisplayService/Show",
            {"person": {"idNumber": HOLDER}, "device": {"deviceId": "phone-1", "place": "home"}},
            token,
        ),
        lambda r: r.status == 200,
    )


# --- the tests ------------------------------------------------------------------------------


def test_a_person_signs_in_and_shows_their_code_over_connect_json(
    module_stack: Stack, holder_token: str
) -> None:
    reply = show(module_stack, holder_token)
    shown = reply.json()
    assert reply.headers["content-type"].startswith("application/json")
    assert shown["token"].startswith("HCN1:")
    assert shown["maskedName"] == "李*"
    assert shown["verdict"]["colour"] == "COLOUR_GREEN"
    assert HOLDER not in reply.body.decode()


def test_binary_grpc_web_calls_reach_the_services(module_stack: Stack, holder_token: str) -> None:
    show(module_stack, holder_token)  # the display knows the holder
    reply = grpc_web(
        module_stack,
        "DisplayService/Show",
        display_pb2.ShowRequest(
            person=common_pb2.PersonRef(id_number=HOLDER),
            device=display_pb2.Device(device_id="phone-1", place="home"),
        ),
        holder_token,
    )
    assert reply.http_status == 200 and reply.grpc_status == 0
    (message,) = reply.messages
    shown = display_pb2.ShowResponse.FromString(message)
    assert shown.token.startswith("HCN1:") and shown.masked_name == "李*"


def test_a_second_scan_arrives_over_grpc_web_with_its_status_and_reason(
    module_stack: Stack, holder_token: str
) -> None:
    token = show(module_stack, holder_token).json()["token"]
    scanner = verifier_token(module_stack)
    scan = display_pb2.ScanRequest(
        token=token, device=display_pb2.Device(device_id="gate-7", place="gate 7")
    )
    first = grpc_web(module_stack, "DisplayService/Scan", scan, scanner)
    assert first.grpc_status == 0, first.trailers
    assert display_pb2.ScanResponse.FromString(first.messages[0]).masked_name == "李*"
    again = grpc_web(module_stack, "DisplayService/Scan", scan, scanner)
    # gRPC-web carries an error in the trailers (STYLE.md), HTTP itself says 200.
    assert again.http_status == 200 and again.messages == []
    assert again.grpc_status == grpc.StatusCode.ALREADY_EXISTS.value[0]
    assert again.reason() == "TOKEN_REPLAYED"
    assert "scanned" in urllib.parse.unquote(again.trailers["grpc-message"])


def test_a_service_error_arrives_over_connect_with_its_status_message_and_reason(
    module_stack: Stack, holder_token: str
) -> None:
    wrong = connect(module_stack, "AccountService/SignIn", {"idNumber": HOLDER, "code": "000000"})
    if wrong.status == 200:  # the one-in-a-million right guess: try another wrong code
        wrong = connect(
            module_stack, "AccountService/SignIn", {"idNumber": HOLDER, "code": "111111"}
        )
    assert wrong.status == 400
    assert wrong.json()["code"] == "invalid_argument"
    assert "ask for a new one" in wrong.json()["message"]
    assert connect_reason(wrong) == "SIGN_IN_REFUSED"
    # A field to fix comes back as the service named it (google.rpc.BadRequest).
    bad = connect(
        module_stack,
        "DeclarationService/Register",
        {"name": "王五", "idNumber": "not an id number"},
        holder_token,
    )
    assert bad.status == 400 and bad.json()["code"] == "invalid_argument"
    assert {d["type"] for d in bad.json()["details"]} >= {"google.rpc.BadRequest"}
    # Someone else's code: refused by the display service's own check, relayed as it said.
    theirs = connect(
        module_stack,
        "DisplayService/Show",
        {"person": {"idNumber": STRANGER}, "device": {"deviceId": "phone-1"}},
        holder_token,
    )
    assert theirs.status == 403 and theirs.json()["code"] == "permission_denied"


def test_a_call_without_a_token_is_refused(module_stack: Stack) -> None:
    for method in ("DisplayService/Show", "DeclarationService/Declare", "ColourService/Explain"):
        reply = connect(module_stack, method, {"person": {"idNumber": HOLDER}})
        assert reply.status == 401, (method, reply.body)
        assert reply.json()["code"] == "unauthenticated"
        assert "Bearer" in reply.json()["message"]
        assert connect_reason(reply) == "UNAUTHENTICATED"
    # A token the platform did not issue is no better.
    forged = connect(module_stack, "DisplayService/Show", {}, token="not.a.token")
    assert forged.status == 401


def test_cors_preflight_from_an_allowed_and_a_refused_origin(module_stack: Stack) -> None:
    asked = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,connect-protocol-version,authorization",
    }
    path = "/healthcode.v1.DisplayService/Show"
    allowed = http(
        module_stack, path, None, {"Origin": module_stack.gateway_url, **asked}, "OPTIONS"
    )
    assert allowed.status == 200
    assert allowed.headers["access-control-allow-origin"] == module_stack.gateway_url
    allowed_headers = allowed.headers["access-control-allow-headers"].lower()
    for header in ("connect-protocol-version", "x-grpc-web", "authorization", "content-type"):
        assert header in allowed_headers
    refused = http(module_stack, path, None, {"Origin": "https://evil.example", **asked}, "OPTIONS")
    assert refused.status == 400
    assert "access-control-allow-origin" not in refused.headers
    # An actual call from the allowed origin may read the gRPC status headers.
    call = http(
        module_stack,
        path,
        b"{}",
        {
            "Origin": module_stack.gateway_url,
            "Content-Type": "application/json",
            "Connect-Protocol-Version": "1",
        },
    )
    assert call.headers["access-control-allow-origin"] == module_stack.gateway_url
    assert "grpc-status" in call.headers["access-control-expose-headers"].lower()


def test_unknown_and_unexposed_methods_are_404(module_stack: Stack, holder_token: str) -> None:
    for path in (
        "/healthcode.v1.DisplayService/NoSuchMethod",
        "/healthcode.v1.NoSuchService/Show",
        # Served by the services, but not to browsers through the gateway.
        "/healthcode.v1.DisplayService/WatchCounters",
        "/healthcode.v1.RiskIndexService/OverrideColour",
        "/healthcode.v1.ColourService/WhatIf",
        "/grpc.health.v1.Health/Check",
    ):
        reply = http(
            module_stack,
            path,
            b"{}",
            {
                "Content-Type": "application/json",
                "Connect-Protocol-Version": "1",
                "Authorization": f"Bearer {holder_token}",
            },
        )
        assert reply.status == 404, path


def test_health_pages_and_the_qr_route(module_stack: Stack, holder_token: str) -> None:
    health = http(module_stack, "/healthz", None, {}, "GET")
    assert health.status == 200 and health.json()["status"] == "SERVING"
    assert set(health.json()["services"]) == {"declaration", "colour", "display"}
    for page in ("/", "/person", "/verifier"):
        reply = http(module_stack, page, None, {}, "GET")
        assert reply.status == 200 and b"<html" in reply.body
        assert "script-src" not in reply.headers["content-security-policy"]  # 'self' only
    token = show(module_stack, holder_token).json()["token"]
    svg = http(module_stack, "/qr?colour=red", token.encode(), {"Content-Type": "text/plain"})
    assert svg.status == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert b"#b3141b" in svg.body and svg.headers["cache-control"] == "no-store"
    assert http(module_stack, "/qr?colour=blue", token.encode(), {}).status == 400
    assert http(module_stack, "/qr", b"<script>", {}).status == 400


def test_the_gateway_logs_no_raw_identifiers(module_stack: Stack, holder_token: str) -> None:
    show(module_stack, holder_token)
    connect(module_stack, "DisplayService/Show", {"person": {"idNumber": HOLDER}})  # refused
    log = module_stack.log_path("gateway").read_text(encoding="utf-8")
    assert "gateway on http://127.0.0.1" in log
    assert HOLDER not in log and HOLDER_PHONE not in log and holder_token not in log
    for line in log.splitlines():
        if line.startswith("{"):
            assert json.loads(line)["service"] == "gateway"


# --- deadlines (the relay alone) ------------------------------------------------------------


class _Context:
    def __init__(self, timeout_ms: float | None) -> None:
        self.timeout_ms = timeout_ms


def test_the_relay_forwards_the_callers_deadline_within_bounds() -> None:
    relay = Relay("healthcode.v1.DisplayService", None, 10.0, 30.0)  # type: ignore[arg-type]
    assert relay._timeout_s(_Context(None)) == 10.0  # type: ignore[arg-type]
    assert relay._timeout_s(_Context(2500)) == 2.5  # type: ignore[arg-type]
    assert relay._timeout_s(_Context(120_000)) == 30.0  # type: ignore[arg-type]
    with pytest.raises(ConnectError) as passed:
        relay._timeout_s(_Context(0))  # type: ignore[arg-type]
    assert passed.value.code is Code.DEADLINE_EXCEEDED
    assert connect_code(grpc.StatusCode.CANCELLED) is Code.CANCELED
    assert connect_code(grpc.StatusCode.ALREADY_EXISTS) is Code.ALREADY_EXISTS


def test_a_service_that_is_down_is_unavailable_and_health_says_which(stack: Stack) -> None:
    register(stack, HOLDER, HOLDER_PHONE)
    token = sign_in(stack, HOLDER, HOLDER_PHONE)
    assert stack.stop_one("display") == 0
    health = http(stack, "/healthz", None, {}, "GET")
    assert health.status == 503 and health.json()["services"]["display"] != "SERVING"
    assert health.json()["services"]["declaration"] == "SERVING"
    down = connect(
        stack,
        "DisplayService/Show",
        {"person": {"idNumber": HOLDER}, "device": {"deviceId": "phone-1"}},
        token,
    )
    assert down.status == 503 and down.json()["code"] == "unavailable"
    assert "try again" in down.json()["message"]
    assert "127.0.0.1" not in down.json()["message"]  # no internal address for a browser
    # The rest of the platform still answers through the gateway.
    assert (
        connect(
            stack, "DeclarationService/GetPerson", {"person": {"idNumber": HOLDER}}, token
        ).status
        == 200
    )
