"""Malformed request bodies through a real grpc server (services/_common/malformed.py): bytes
that are not the method's message get INVALID_ARGUMENT naming the message type (unary, client-
and bidi-streaming, server-streaming, and the health service too), well-formed calls are
untouched, and the log gets one line per method per interval, never a traceback."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from healthcode.v1 import declaration_pb2

from services._common import malformed
from services._common.server import create_server, stop
from services._common.status import field_violations

SERVICE = "healthcode.test.Parsed"
Register = declaration_pb2.RegisterRequest
Import = declaration_pb2.ImportPeopleRequest

# Bytes no protobuf message parses: a field tag with no value; a length running past the end;
# a string field (RegisterRequest.name, ImportPeopleRequest.rows[].id_number) with bad UTF-8.
CORRUPT = b"\x08"
TRUNCATED = b"\x0a\x05ab"
BAD_UTF8 = b"\x12\x02\xff\xfe"


class Parsed:
    """Unary (`Echo`), client-streaming (`Count`), bidi (`Each`) and server-streaming (`Repeat`)
    methods over real messages; records what each handler saw."""

    def __init__(self) -> None:
        self.seen: list[object] = []

    def echo(self, request: Register, context: grpc.ServicerContext) -> Register:
        self.seen.append(request)
        return Register(name=request.name)

    def count(
        self, requests: Iterator[Import], context: grpc.ServicerContext
    ) -> declaration_pb2.ImportPeopleResponse:
        chunks = 0
        for request in requests:
            self.seen.append(request)
            chunks += 1
        return declaration_pb2.ImportPeopleResponse(chunks=chunks)

    def each(
        self, requests: Iterator[Register], context: grpc.ServicerContext
    ) -> Iterator[Register]:
        for request in requests:
            self.seen.append(request)
            yield Register(name=request.name)

    def repeat(self, request: Register, context: grpc.ServicerContext) -> Iterator[Register]:
        self.seen.append(request)
        yield Register(name=request.name)
        yield Register(name=request.name)

    def add_to(self, server: grpc.Server) -> None:
        parse, out = Register.FromString, Register.SerializeToString
        handlers = {
            "Echo": grpc.unary_unary_rpc_method_handler(self.echo, parse, out),
            "Count": grpc.stream_unary_rpc_method_handler(
                self.count,
                Import.FromString,
                declaration_pb2.ImportPeopleResponse.SerializeToString,
            ),
            "Each": grpc.stream_stream_rpc_method_handler(self.each, parse, out),
            "Repeat": grpc.unary_stream_rpc_method_handler(self.repeat, parse, out),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Parsed, grpc.Channel]]:
    # A long interval: every line a test sees is one the rate limit let through.
    monkeypatch.setattr(malformed, "LOG_INTERVAL_S", 60.0)
    parsed = Parsed()
    server, port = create_server(parsed.add_to, [SERVICE], max_workers=4)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield parsed, channel
    finally:
        channel.close()
        stop(server, None)


def _raw(
    channel: grpc.Channel, method: str, kind: str = "unary_unary"
) -> grpc.UnaryUnaryMultiCallable:
    # No serializers: the bytes go out as they are, the answer comes back as bytes.
    return getattr(channel, kind)(f"/{SERVICE}/{method}")  # type: ignore[no-any-return]


def _refused(call: object) -> grpc.RpcError:
    """The error a call that must fail raised."""
    with pytest.raises(grpc.RpcError) as raised:
        result = call() if callable(call) else call
        if isinstance(result, Iterator):
            list(result)
    return raised.value


def _assert_invalid(error: grpc.RpcError, message_type: str) -> None:
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert f"not a valid {message_type}" in (error.details() or "")
    assert [f for f, _ in field_violations(error)] == [""]


def _no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info or r.exc_text], caplog.text
    assert "Traceback" not in caplog.text
    assert "Exception deserializing" not in caplog.text


def test_a_unary_body_that_does_not_parse_is_invalid_argument_with_one_log_line(
    served: tuple[Parsed, grpc.Channel], caplog: pytest.LogCaptureFixture
) -> None:
    parsed, channel = served
    echo = _raw(channel, "Echo")
    with caplog.at_level(logging.INFO):
        for body in (CORRUPT, TRUNCATED, BAD_UTF8, b"\xff" * 1000):
            error = _refused(lambda body=body: echo(body, timeout=10))
            _assert_invalid(error, "healthcode.v1.RegisterRequest")
        bad_utf8 = _refused(lambda: echo(BAD_UTF8, timeout=10))
        assert isinstance(bad_utf8, grpc.Call)
        assert "bad UTF-8" in (bad_utf8.details() or "")
        # Well-formed calls are untouched.
        good = Register(name="张三")
        assert Register.FromString(echo(good.SerializeToString(), timeout=10)) == good
        assert echo(b"", timeout=10) == b""  # the empty message is a valid one
    assert parsed.seen == [Register(name="张三"), Register()]  # no handler saw the garbage
    lines = [r for r in caplog.records if r.name == malformed.__name__]
    assert len(lines) == 1, caplog.text  # five refused, one line in the interval
    assert lines[0].levelno == logging.WARNING
    assert "/healthcode.test.Parsed/Echo" in lines[0].getMessage()
    assert "healthcode.v1.RegisterRequest" in lines[0].getMessage()
    _no_traceback(caplog)


def test_a_malformed_message_in_a_client_stream_ends_the_call_after_the_ones_before_it(
    served: tuple[Parsed, grpc.Channel], caplog: pytest.LogCaptureFixture
) -> None:
    parsed, channel = served
    count = _raw(channel, "Count", "stream_unary")
    good = Import(rows=[declaration_pb2.ImportRow(line=1, name="李四")]).SerializeToString()
    with caplog.at_level(logging.INFO):
        error = _refused(lambda: count(iter([BAD_UTF8]), timeout=10))
        _assert_invalid(error, "healthcode.v1.ImportPeopleRequest")
        error = _refused(lambda: count(iter([good, good, CORRUPT, good]), timeout=10))
        _assert_invalid(error, "healthcode.v1.ImportPeopleRequest")
        # The two messages before the malformed one were handled; nothing after it.
        assert len(parsed.seen) == 2
        reply = count(iter([good, good, good]), timeout=10)
    assert declaration_pb2.ImportPeopleResponse.FromString(reply).chunks == 3
    lines = [r for r in caplog.records if r.name == malformed.__name__]
    assert len(lines) == 1 and "Count" in lines[0].getMessage()
    _no_traceback(caplog)


def test_bidi_and_server_streaming_methods_refuse_a_malformed_body_too(
    served: tuple[Parsed, grpc.Channel], caplog: pytest.LogCaptureFixture
) -> None:
    _, channel = served
    each = _raw(channel, "Each", "stream_stream")
    repeat = _raw(channel, "Repeat", "unary_stream")
    good = Register(name="王五").SerializeToString()
    with caplog.at_level(logging.INFO):
        answers = each(iter([good, TRUNCATED, good]), timeout=10)
        assert next(answers) == good  # the first is answered before the bad one is read
        error = _refused(answers)
        _assert_invalid(error, "healthcode.v1.RegisterRequest")
        error = _refused(lambda: repeat(CORRUPT, timeout=10))
        _assert_invalid(error, "healthcode.v1.RegisterRequest")
        assert list(repeat(good, timeout=10)) == [good, good]
        assert list(each(iter([good, good]), timeout=10)) == [good, good]
    _no_traceback(caplog)


def test_the_health_service_refuses_garbage_and_still_answers(
    served: tuple[Parsed, grpc.Channel], caplog: pytest.LogCaptureFixture
) -> None:
    _, channel = served
    check = channel.unary_unary("/grpc.health.v1.Health/Check")
    with caplog.at_level(logging.INFO):
        error = _refused(lambda: check(CORRUPT, timeout=10))
        _assert_invalid(error, "grpc.health.v1.HealthCheckRequest")
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    _no_traceback(caplog)


def test_the_log_counts_the_calls_refused_between_its_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = [100.0]
    interceptor = malformed.MalformedRequests(log_interval_s=1.0, clock=lambda: clock[0])

    class Aborted(Exception):
        pass

    class Context:
        def abort_with_status(self, status: grpc.Status) -> None:
            assert status.code == grpc.StatusCode.INVALID_ARGUMENT
            raise Aborted

    def refuse(method: str) -> None:
        with pytest.raises(Aborted):
            interceptor._refuse(
                method,
                "healthcode.v1.X",
                malformed.Malformed("corrupt"),
                Context(),  # type: ignore[arg-type]
            )

    with caplog.at_level(logging.INFO, logger=malformed.__name__):
        for _ in range(5):
            refuse("/a/A")
        refuse("/b/B")  # another method has its own line
        clock[0] += 1.5
        refuse("/a/A")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages
    assert messages[0].startswith("/a/A") and "more" not in messages[0]
    assert messages[1].startswith("/b/B")
    assert messages[2].startswith("/a/A") and "4 more since the last line" in messages[2]
    assert interceptor.refused == 7
