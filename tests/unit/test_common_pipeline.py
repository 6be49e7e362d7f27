"""The interceptor chain built once per method (services/_common/pipeline.py): built on the first
call of a method and never again, while every call is still measured, checked for a malformed
body, shed, authenticated as its own caller and traced in its own trace; unknown methods keep
nothing.

The first tests drive the real interceptors in-process with a stand-in for grpc's context (no
network); the last goes through `create_server` over mutual TLS."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import pytest
from healthcode.v1 import display_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from services._common.actors import Role
from services._common.auth import (
    ISSUER_KEYS,
    AuthInterceptor,
    Caller,
    Security,
    TokenIssuer,
    TokenVerifier,
    create_issuer_keys,
    current_caller,
)
from services._common.malformed import MalformedRequests
from services._common.metrics import CallMetrics
from services._common.pipeline import MethodPipeline
from services._common.pki import DEV_IDENTITIES, create_dev_credentials
from services._common.server import PIPELINES, SHEDDERS, create_server, stop
from services._common.shedding import Shedder
from services._common.status import reason_of
from services._common.telemetry import server_interceptor, setup_tracing

SERVICE = "healthcode.v1.DisplayService"
SHOW = f"/{SERVICE}/Show"  # the access table: people only
SCAN = f"/{SERVICE}/Scan"  # the access table: verifiers and partners
PERSON_A = bytes(range(16))
PERSON_B = bytes(range(16, 32))
TRUNCATED = b"\x0a\x05ab"  # a length running past the end: no message parses it
BODY = display_pb2.ShowRequest().SerializeToString()


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("credentials")
    create_dev_credentials(directory)
    create_issuer_keys(directory)
    return directory


@pytest.fixture(scope="module")
def tokens(credentials: Path) -> dict[str, str]:
    issuer = TokenIssuer(credentials)
    return {
        "a": issuer.person(PERSON_A, "110***********001X"),
        "b": issuer.person(PERSON_B, "120***********002X"),
        "verifier": issuer.staff(Role.VERIFIER, "bus-17", "bus"),
    }


# --- in-process: the real interceptors, a stand-in context ----------------------------------


class Metadatum(NamedTuple):
    key: str
    value: str


class Details(NamedTuple):
    method: str
    invocation_metadata: tuple[Metadatum, ...]


class Aborted(Exception):
    pass


class Context:
    """What the interceptors read of grpc's servicer context: metadata, the peer's certificate
    identity, the peer address; aborting records the status and raises, as grpc does."""

    def __init__(self, token: str | None = None) -> None:
        self.metadata = (Metadatum("authorization", f"Bearer {token}"),) if token else ()
        self.status: grpc.Status | None = None

    def invocation_metadata(self) -> tuple[Metadatum, ...]:
        return self.metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"peer_spiffe_id": [DEV_IDENTITIES["cli"].encode()]}

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"

    def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise Aborted(status.details)

    def code(self) -> grpc.StatusCode | None:
        return None if self.status is None else self.status.code


class Spy(grpc.ServerInterceptor):
    """Outermost: counts how often the chain is asked to wrap a handler, and what it saw."""

    def __init__(self) -> None:
        self.wraps: Counter[str] = Counter()
        self.metadata: list[object] = []

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        self.wraps[handler_call_details.method] += 1
        self.metadata.append(handler_call_details.invocation_metadata)
        return continuation(handler_call_details)


class Chain:
    """The server's chain (metrics, malformed bodies, shedding, authentication, tracing) behind
    a spy, kept per method, in front of two handlers that answer with the caller they saw."""

    def __init__(self, credentials: Path) -> None:
        self.spy = Spy()
        self.registry = CollectorRegistry()
        self.shedder = Shedder(4)
        self.pipeline = MethodPipeline(
            [
                self.spy,
                CallMetrics(self.registry),
                MalformedRequests(),
                self.shedder,
                AuthInterceptor(TokenVerifier(credentials / ISSUER_KEYS)),
                server_interceptor(),
            ]
        )
        self.handled = 0
        self.handlers = {
            method: grpc.unary_unary_rpc_method_handler(
                self._answer, request_deserializer=display_pb2.ShowRequest.FromString
            )
            for method in (SHOW, SCAN)
        }

    def _answer(self, _request: object, _context: object) -> Caller | None:
        self.handled += 1
        return current_caller()

    def lookup(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self.handlers.get(details.method)  # as grpc's generic handler does

    def call(self, method: str, context: Context, body: bytes = BODY) -> Any:
        details = Details(method, context.metadata)
        handler = self.pipeline.intercept_service(self.lookup, details)
        assert handler is not None and handler.request_deserializer is not None
        request = handler.request_deserializer(body)
        return handler.unary_unary(request, context)  # type: ignore[arg-type]

    def refusal(self, method: str, context: Context, body: bytes = BODY) -> grpc.StatusCode:
        with pytest.raises(Aborted):
            self.call(method, context, body)
        assert context.status is not None
        return context.status.code

    def count(self, method: str, code: str) -> float | None:
        return self.registry.get_sample_value(
            "healthcode_rpc_server_duration_seconds_count",
            {"service": SERVICE, "method": method.rsplit("/", 1)[-1], "code": code},
        )


@pytest.fixture
def chain(credentials: Path) -> Chain:
    return Chain(credentials)


def test_the_chain_is_built_once_per_method_and_with_no_caller_in_it(
    chain: Chain, tokens: dict[str, str]
) -> None:
    for _ in range(25):
        chain.call(SHOW, Context(tokens["a"]))
        chain.call(SHOW, Context(tokens["b"]))
    for _ in range(10):
        chain.call(SCAN, Context(tokens["verifier"]))
    assert chain.handled == 60
    assert chain.spy.wraps == {SHOW: 1, SCAN: 1}
    assert chain.pipeline.builds == 2 and chain.pipeline.methods == {SHOW, SCAN}
    # Built from the method alone: no caller's metadata (their token) went into it.
    assert chain.spy.metadata == [(), ()]
    # Every call was still measured, by method.
    assert chain.count(SHOW, "OK") == 50
    assert chain.count(SCAN, "OK") == 10


def test_each_caller_is_authenticated_as_themself_on_a_kept_chain(
    chain: Chain, tokens: dict[str, str]
) -> None:
    seen = [chain.call(SHOW, Context(tokens[who])) for who in ("a", "b", "a", "b", "b", "a")]
    assert [caller.person_key for caller in seen] == [
        PERSON_A, PERSON_B, PERSON_A, PERSON_B, PERSON_B, PERSON_A,
    ]  # fmt: skip
    assert all(caller.role is Role.CITIZEN for caller in seen)
    verifier = chain.call(SCAN, Context(tokens["verifier"]))
    assert (verifier.role, verifier.principal) == (Role.VERIFIER, "bus-17")
    assert chain.spy.wraps == {SHOW: 1, SCAN: 1}
    assert current_caller() is None  # the caller is set around the call only


def test_refusals_still_happen_after_the_chain_is_kept(
    chain: Chain, tokens: dict[str, str]
) -> None:
    assert chain.call(SHOW, Context(tokens["a"])).person_key == PERSON_A  # built and kept
    handled = chain.handled

    # A role the access table does not list for Show, a relay without a token, a forged token.
    assert chain.refusal(SHOW, Context(tokens["verifier"])) == grpc.StatusCode.PERMISSION_DENIED
    assert chain.refusal(SHOW, Context()) == grpc.StatusCode.UNAUTHENTICATED
    assert chain.refusal(SHOW, Context("abc.def.ghi")) == grpc.StatusCode.UNAUTHENTICATED
    # A body that does not parse, from a caller who may call Show.
    assert chain.refusal(SHOW, Context(tokens["a"]), TRUNCATED) == grpc.StatusCode.INVALID_ARGUMENT
    # Overload: the limit read when the call runs, not when the chain was built.
    chain.shedder.limit = 0
    assert chain.refusal(SHOW, Context(tokens["a"])) == grpc.StatusCode.RESOURCE_EXHAUSTED
    chain.shedder.limit = 4

    assert chain.handled == handled  # no refused call reached the handler
    assert chain.call(SHOW, Context(tokens["b"])).person_key == PERSON_B
    assert chain.spy.wraps == {SHOW: 1}
    for code, calls in [
        ("OK", 2),
        ("PERMISSION_DENIED", 1),
        ("UNAUTHENTICATED", 2),
        ("INVALID_ARGUMENT", 1),
        ("RESOURCE_EXHAUSTED", 1),
    ]:
        assert chain.count(SHOW, code) == calls, code


def test_unknown_methods_keep_nothing(chain: Chain, tokens: dict[str, str]) -> None:
    chain.call(SHOW, Context(tokens["a"]))
    for n in range(200):
        details = Details(f"/{SERVICE}/Made{n}", Context(tokens["a"]).metadata)
        assert chain.pipeline.intercept_service(chain.lookup, details) is None
    assert chain.pipeline.methods == {SHOW}
    assert chain.pipeline.builds == 1
    assert set(chain.spy.wraps) == {SHOW}  # the chain never ran for them


def test_a_new_handler_for_a_method_gets_a_new_chain(chain: Chain, tokens: dict[str, str]) -> None:
    chain.call(SHOW, Context(tokens["a"]))
    chain.handlers[SHOW] = grpc.unary_unary_rpc_method_handler(
        lambda _r, _c: "replaced", request_deserializer=display_pb2.ShowRequest.FromString
    )
    assert chain.call(SHOW, Context(tokens["a"])) == "replaced"
    assert chain.spy.wraps == {SHOW: 2}


# --- through create_server, over mutual TLS -------------------------------------------------


def _traceparent(trace_id: int) -> str:
    return f"00-{trace_id:032x}-{0x1234567890ABCDEF:016x}-01"


@pytest.fixture
def served(credentials: Path) -> Iterator[tuple[grpc.Server, grpc.Channel]]:
    def answer(_request: display_pb2.ShowRequest, _context: grpc.ServicerContext) -> bytes:
        caller = current_caller()
        assert caller is not None
        return caller.person_key or caller.principal.encode()

    def add(server: grpc.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(
            answer, request_deserializer=display_pb2.ShowRequest.FromString
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Show": handler, "Scan": handler}),)
        )

    server, port = create_server(
        add, [SERVICE], security=Security.load(credentials, "display"), max_workers=4
    )
    client = Security.load(credentials, "cli")
    channel = grpc.secure_channel(f"127.0.0.1:{port}", client.channel_credentials())
    try:
        yield server, channel
    finally:
        channel.close()
        stop(server, None)


def test_a_served_chain_keeps_callers_refusals_and_traces_apart(
    served: tuple[grpc.Server, grpc.Channel], tokens: dict[str, str]
) -> None:
    server, channel = served
    exporter = InMemorySpanExporter()
    setup_tracing("test", exporter)
    show = channel.unary_unary(SHOW)

    def call(token: str, trace_id: int, body: bytes = BODY) -> bytes:
        metadata = (("authorization", f"Bearer {token}"), ("traceparent", _traceparent(trace_id)))
        return show(body, metadata=metadata, timeout=10)  # type: ignore[no-any-return]

    assert call(tokens["a"], 0xA1) == PERSON_A
    assert call(tokens["b"], 0xB2) == PERSON_B
    assert call(tokens["a"], 0xA3) == PERSON_A
    with pytest.raises(grpc.RpcError) as refused:
        call(tokens["verifier"], 0xC4)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(refused.value) == "ROLE_NOT_ALLOWED"
    with pytest.raises(grpc.RpcError) as malformed:
        call(tokens["a"], 0xD5, TRUNCATED)
    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    SHEDDERS[id(server)].limit = 0
    with pytest.raises(grpc.RpcError) as shed:
        call(tokens["a"], 0xE6)
    assert shed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as unknown:
        channel.unary_unary(f"/{SERVICE}/Nothing")(BODY, timeout=10)
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED

    pipeline = PIPELINES[id(server)]
    assert pipeline.methods == {SHOW} and pipeline.builds == 1
    # Each call's span is in the trace its own metadata named (a refused caller costs no span:
    # the authentication interceptor refuses before the tracing one).
    traces = sorted(
        s.context.trace_id
        for s in exporter.get_finished_spans()
        if s.kind == trace.SpanKind.SERVER and s.name == SHOW
    )
    assert traces == [0xA1, 0xA3, 0xB2]
