"""Every role on every RPC of the four real services: each reaches only what the access table
allows (services/_common/access.py), and a refused call changes nothing (issue 10, item 2).

The caller comes from the credential alone (a certificate or a bearer token over mutual TLS);
every request leaves its actor unset, so the credential decides. A role the table does not list
gets PERMISSION_DENIED with reason ROLE_NOT_ALLOWED before the handler runs; a role it lists gets
past the door (the handler may still refuse the empty request, with another status or reason).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt
import pytest
from google.protobuf import descriptor, message_factory
from healthcode.v1 import (
    account_pb2,
    cold_chain_pb2,
    colour_pb2,
    common_pb2,
    consent_pb2,
    declaration_pb2,
    display_pb2,
    display_pb2_grpc,
    partners_pb2,
    province_pb2,
    risk_index_pb2,
    risk_index_pb2_grpc,
)

from clients.channel import open_channel
from clients.credentials import BearerTokens, ClientCredentials
from clients.stack import Stack
from services._common.access import ACCESS
from services._common.actors import Role
from services._common.auth import Security, TokenIssuer, create_issuer_keys, rotate_issuer_key
from services._common.status import reason_of

SERVICES = {
    "declaration": declaration_pb2.DESCRIPTOR.services_by_name["DeclarationService"],
    "account": account_pb2.DESCRIPTOR.services_by_name["AccountService"],
    "risk_index": risk_index_pb2.DESCRIPTOR.services_by_name["RiskIndexService"],
    "colour": colour_pb2.DESCRIPTOR.services_by_name["ColourService"],
    "display": display_pb2.DESCRIPTOR.services_by_name["DisplayService"],
    "partners": partners_pb2.DESCRIPTOR.services_by_name["PartnerService"],  # served by display
    # served by the risk index (issue 11, items 9 and 10)
    "cold_chain": cold_chain_pb2.DESCRIPTOR.services_by_name["ColdChainService"],
    "province": province_pb2.DESCRIPTOR.services_by_name["ProvinceExchangeService"],
    # served by the declaration process (issue 11, item 11)
    "consent": consent_pb2.DESCRIPTOR.services_by_name["ConsentService"],
}
PERSON_KEY = bytes(range(16))


@dataclass(frozen=True)
class Credential:
    """How one role proves itself: a certificate of its own, or the CLI's edge certificate and a
    bearer token."""

    name: str
    roles: frozenset[Role]
    identity: str  # the certificate file in the stack's credentials directory
    token: str | None = None


def _credentials(stack: Stack) -> list[Credential]:
    issuer = TokenIssuer(stack.credentials_dir)
    return [
        Credential(
            "citizen", frozenset({Role.CITIZEN, Role.FAMILY_PROXY}), "cli",
            issuer.person(PERSON_KEY, "110***********0011"),
        ),
        Credential(
            "grid_worker", frozenset({Role.GRID_WORKER}), "cli",
            issuer.staff(Role.GRID_WORKER, "grid-7"),
        ),
        Credential(
            "verifier", frozenset({Role.VERIFIER}), "cli",
            issuer.staff(Role.VERIFIER, "bus-17", "bus"),
        ),
        Credential("support", frozenset({Role.SUPPORT}), "cli", issuer.staff(Role.SUPPORT, "desk-2")),
        Credential("admin", frozenset({Role.ADMIN}), "cli", issuer.staff(Role.ADMIN, "root")),
        Credential("feed", frozenset({Role.FEED}), "feed-demo"),
        Credential("partner", frozenset({Role.PARTNER}), "partner-hospital"),
        Credential("service", frozenset({Role.SERVICE}), "colour"),
    ]  # fmt: skip


def _channel(stack: Stack, target: str, cred: Credential) -> grpc.Channel:
    security = Security.load(stack.credentials_dir, cred.identity)
    client = ClientCredentials(security, issuer=None, token=cred.token)
    channel = grpc.secure_channel(target, security.channel_credentials())
    return grpc.intercept_channel(channel, BearerTokens(client))


def _call(channel: grpc.Channel, service: str, method: descriptor.MethodDescriptor) -> grpc.Call:
    """Call `method` with an empty request; the error (or None when it was answered)."""
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    path = f"/{method.containing_service.full_name}/{method.name}"
    kwargs = {
        "request_serializer": request_cls.SerializeToString,
        "response_deserializer": response_cls.FromString,
    }
    try:
        if method.client_streaming and method.server_streaming:
            stream = channel.stream_stream(path, **kwargs)(iter([request_cls()]), timeout=3)
            next(iter(stream), None)
        elif method.client_streaming:
            channel.stream_unary(path, **kwargs)(iter([request_cls()]), timeout=3)
        elif method.server_streaming:
            stream = channel.unary_stream(path, **kwargs)(request_cls(), timeout=3)
            next(iter(stream), None)
        else:
            channel.unary_unary(path, **kwargs)(request_cls(), timeout=3)
    except grpc.RpcError as error:
        assert isinstance(error, grpc.Call)
        return error
    return None  # type: ignore[return-value]


def _all_methods() -> Iterator[tuple[str, descriptor.MethodDescriptor]]:
    for name, service in SERVICES.items():
        for method in service.methods:
            yield name, method


def test_the_table_names_every_rpc_of_every_service() -> None:
    methods = {f"/{m.containing_service.full_name}/{m.name}" for _, m in _all_methods()}
    assert methods - set(ACCESS) == set(), "RPCs missing from services/_common/access.py"
    assert set(ACCESS) - methods == set(), "access table entries naming no RPC"


def _version(stack: Stack) -> int:
    with open_channel(stack.peers.risk_index) as channel:
        stub = risk_index_pb2_grpc.RiskIndexServiceStub(channel)
        return stub.GetIndexVersion(risk_index_pb2.GetIndexVersionRequest()).version


def test_each_role_reaches_only_what_the_table_allows(module_stack: Stack) -> None:
    stack = module_stack
    before = _version(stack)
    seen: dict[tuple[str, str], str] = {}
    refused = allowed = 0
    for cred in _credentials(stack):
        channels = {n: _channel(stack, a, cred) for n, a in stack.peers.items()}
        channels["account"] = _channel(stack, stack.peers.declaration, cred)
        channels["partners"] = _channel(stack, stack.peers.display, cred)
        channels["cold_chain"] = _channel(stack, stack.peers.risk_index, cred)
        channels["province"] = _channel(stack, stack.peers.risk_index, cred)
        channels["consent"] = _channel(stack, stack.peers.declaration, cred)
        try:
            for service, method in _all_methods():
                path = f"/{method.containing_service.full_name}/{method.name}"
                error = _call(channels[service], service, method)
                code = error.code() if error is not None else grpc.StatusCode.OK
                outcome = code.name + (f"/{reason_of(error)}" if error is not None else "")
                seen[(cred.name, path)] = outcome
                may = bool(cred.roles & ACCESS[path])
                if may:
                    allowed += 1
                    assert not (
                        code == grpc.StatusCode.PERMISSION_DENIED
                        and reason_of(error) == "ROLE_NOT_ALLOWED"
                    ), f"{cred.name} may call {path} by the table, but was refused: {outcome}"
                    # (a wrong staff password is the handler's UNAUTHENTICATED, not the door's)
                    assert outcome != "UNAUTHENTICATED/UNAUTHENTICATED", (cred.name, path)
                else:
                    refused += 1
                    assert code == grpc.StatusCode.PERMISSION_DENIED, (cred.name, path, outcome)
                    assert reason_of(error) == "ROLE_NOT_ALLOWED", (cred.name, path, outcome)
        finally:
            for channel in channels.values():
                channel.close()
    # Every role was refused somewhere and allowed somewhere: the matrix is not vacuous.
    for cred in _credentials(stack):
        outcomes = [v for (who, _), v in seen.items() if who == cred.name]
        assert any(o == "PERMISSION_DENIED/ROLE_NOT_ALLOWED" for o in outcomes), cred.name
        assert any(o != "PERMISSION_DENIED/ROLE_NOT_ALLOWED" for o in outcomes), cred.name
    assert refused > 50 and allowed > 30
    # Nothing a refused (or empty) call did reached the index.
    assert _version(stack) == before


def test_an_edge_certificate_without_a_token_reaches_health_only(module_stack: Stack) -> None:
    stack = module_stack
    security = Security.load(stack.credentials_dir, "cli")
    with grpc.secure_channel(stack.peers.colour, security.channel_credentials()) as channel:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(
                "/healthcode.v1.ColourService/GetStatus",
                request_serializer=colour_pb2.GetStatusRequest.SerializeToString,
                response_deserializer=colour_pb2.GetStatusResponse.FromString,
            )(colour_pb2.GetStatusRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in (caught.value.details() or "")


def test_a_client_without_a_certificate_cannot_connect(module_stack: Stack) -> None:
    stack = module_stack
    ca = (stack.credentials_dir / "ca.pem").read_bytes()
    no_certificate = grpc.secure_channel(
        stack.peers.display, grpc.ssl_channel_credentials(root_certificates=ca)
    )
    plain_text = grpc.insecure_channel(stack.peers.display)
    for channel in (no_certificate, plain_text):
        with channel, pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(
                "/healthcode.v1.DisplayService/GetVerificationKey",
                request_serializer=display_pb2.GetVerificationKeyRequest.SerializeToString,
                response_deserializer=display_pb2.GetVerificationKeyResponse.FromString,
            )(display_pb2.GetVerificationKeyRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def _show(stack: Stack, token: str, actor: common_pb2.Actor | None = None) -> grpc.Call | None:
    security = Security.load(stack.credentials_dir, "cli")
    client = ClientCredentials(security, issuer=None, token=token)
    channel = grpc.intercept_channel(
        grpc.secure_channel(stack.peers.display, security.channel_credentials()),
        BearerTokens(client),
    )
    request = display_pb2.ShowRequest(
        device=display_pb2.Device(device_id="matrix", place="test"),
        person=common_pb2.PersonRef(person_key=PERSON_KEY),
    )
    if actor is not None:
        request.actor.CopyFrom(actor)
    try:
        display_pb2_grpc.DisplayServiceStub(channel).Show(request, timeout=5)
    except grpc.RpcError as error:
        assert isinstance(error, grpc.Call)
        return error
    finally:
        channel.close()
    return None


def test_a_body_claiming_someone_else_is_refused(module_stack: Stack) -> None:
    stack = module_stack
    issuer = TokenIssuer(stack.credentials_dir)
    token = issuer.person(PERSON_KEY, "")
    other = common_pb2.Actor(
        role=common_pb2.ACTOR_ROLE_CITIZEN,
        person=common_pb2.PersonRef(person_key=bytes(16)),
    )
    error = _show(stack, token, other)
    assert error is not None and error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(error) == "ACTOR_NOT_CREDENTIAL"
    admin = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_GRID_WORKER, principal="grid-7")
    error = _show(stack, token, admin)
    assert error is not None and error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(error) == "ACTOR_NOT_CREDENTIAL"
    # The same token with the actor left unset gets past the credential checks (the person is
    # not registered in this stack, so the answer is about the person, not the caller).
    error = _show(stack, token)
    assert error is None or error.code() not in (
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    ), error


def test_tokens_from_an_unpublished_key_or_expired_are_refused(
    module_stack: Stack, tmp_path: Path
) -> None:
    stack = module_stack
    create_issuer_keys(tmp_path)  # another issuer: its key is not published to this stack
    forged = TokenIssuer(tmp_path).person(PERSON_KEY, "")
    error = _show(stack, forged)
    assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "does not publish" in (error.details() or "")
    expired = TokenIssuer(stack.credentials_dir).person(PERSON_KEY, "", dt.timedelta(seconds=-60))
    error = _show(stack, expired)
    assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (error.details() or "")
    error = _show(stack, "not-a-token")
    assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_rotated_issuer_key_keeps_earlier_tokens_valid(module_stack: Stack) -> None:
    stack = module_stack
    before = TokenIssuer(stack.credentials_dir).person(PERSON_KEY, "")
    rotate_issuer_key(stack.credentials_dir)
    after = TokenIssuer(stack.credentials_dir)
    assert after.kid != jwt.get_unverified_header(before)["kid"]
    for token in (before, after.person(PERSON_KEY, "")):
        error = _show(stack, token)
        assert error is None or error.code() != grpc.StatusCode.UNAUTHENTICATED, error


def test_a_probe_port_answers_health_in_plain_text_and_nothing_else(tmp_path: Path) -> None:
    """Kubernetes' gRPC probes present no certificate: HEALTHCODE_<SERVICE>_HEALTH_PORT serves
    the health service alone, in plain text."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from clients.stack import free_port

    probe = free_port()
    stack = Stack.on_free_ports(tmp_path / "data", {"HEALTHCODE_DISPLAY_HEALTH_PORT": str(probe)})
    stack.start()
    try:
        stack.wait_healthy(timeout_s=60)
        with grpc.insecure_channel(f"127.0.0.1:{probe}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="healthcode.v1.DisplayService"), timeout=5
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as other:
                channel.unary_unary(
                    "/healthcode.v1.DisplayService/GetVerificationKey",
                    request_serializer=display_pb2.GetVerificationKeyRequest.SerializeToString,
                    response_deserializer=display_pb2.GetVerificationKeyResponse.FromString,
                )(display_pb2.GetVerificationKeyRequest(), timeout=5)
            assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        codes = stack.stop()
    assert codes == dict.fromkeys(codes, 0), codes
