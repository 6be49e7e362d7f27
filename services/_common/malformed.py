"""Malformed request bodies: INVALID_ARGUMENT and one log line, not INTERNAL and a traceback
(issue 10, fuzzing).

grpc parses a request before the handler runs; when the bytes are not the method's message it
answers INTERNAL ("Exception deserializing request!") and logs a full traceback, so a client
sending garbage looks like a server fault and a flood of it fills the log. This interceptor gives
every handler a request deserializer that returns a marker instead of raising, and a behaviour
that refuses the marker with INVALID_ARGUMENT ("the request body is not a valid
healthcode.v1.RegisterRequest", with a BadRequest detail). Streaming requests are checked message
by message as the handler reads them: the messages before a malformed one have been handled (an
import's earlier chunks stay stored), the stream ends at it.

The log says which method got how many: at most one line per method per second
(`LOG_INTERVAL_S`), with the number left out since the last, never a traceback.

A well-formed unary request costs one `isinstance` in the handler's path (the handler is
wrapped once per method: services/_common/pipeline.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import message

from services._common.errors import InvalidArgument
from services._common.status import to_status

logger = logging.getLogger(__name__)

# At most one log line per method this often; the calls in between are counted in the next.
LOG_INTERVAL_S = 1.0


class Malformed:
    """What the wrapped deserializer returns for bytes that do not parse (never None: grpc
    reads None as its own deserialization failure)."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def message_name(deserializer: Callable[[bytes], Any]) -> str:
    """The full name of the message a deserializer parses (`Message.FromString`), or a
    description of the deserializer when it is not a generated message's."""
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", None)
    if isinstance(name, str):
        return name
    return getattr(deserializer, "__qualname__", None) or "request message"


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:  # noqa: BLE001 - DecodeError, or a custom parser's error
            return Malformed(_why(error))

    return parse


def _why(error: Exception) -> str:
    """What was wrong, safe to show and log: protobuf's fixed reasons ("Wire format was
    corrupt", "String field had bad UTF-8") never hold the data; another deserializer's text
    might, so only its type is kept."""
    if isinstance(error, message.DecodeError):
        reason = str(error).rsplit(": ", 1)[-1].strip().rstrip(".")
        if reason and len(reason) <= 100:
            return reason[0].lower() + reason[1:]
    return type(error).__name__


class _CheckedRequests:
    """A request stream that refuses the first malformed message (aborting the call)."""

    __slots__ = ("_refuse", "_requests")

    def __init__(self, requests: Iterator[Any], refuse: Callable[[Malformed], None]) -> None:
        self._requests = requests
        self._refuse = refuse

    def __iter__(self) -> _CheckedRequests:
        return self

    def __next__(self) -> Any:
        request = next(self._requests)
        if isinstance(request, Malformed):
            self._refuse(request)  # raises (context.abort)
        return request

    next = __next__  # grpc's own request iterator has both


class MalformedRequests(grpc.ServerInterceptor):
    """Refuse request bodies that do not parse with INVALID_ARGUMENT, logging rate-limited
    one-line warnings."""

    def __init__(
        self,
        log_interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = LOG_INTERVAL_S if log_interval_s is None else log_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        # By method: when the last line was written, calls refused since without a line.
        self._last_logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}
        self.refused = 0  # malformed calls refused since the start

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler  # unknown method (UNIMPLEMENTED), or raw bytes: nothing to parse
        deserializer = handler.request_deserializer
        method: str = handler_call_details.method

        def refuse(request: Malformed, context: grpc.ServicerContext) -> None:
            self._refuse(method, message_name(deserializer), request, context)

        changes: dict[str, Any] = {"request_deserializer": _tolerant(deserializer)}
        if handler.request_streaming and handler.response_streaming:
            changes["stream_stream"] = _streaming(handler.stream_stream, refuse)
        elif handler.request_streaming:
            changes["stream_unary"] = _streaming(handler.stream_unary, refuse)
        elif handler.response_streaming:
            changes["unary_stream"] = _unary(handler.unary_stream, refuse)
        else:
            changes["unary_unary"] = _unary(handler.unary_unary, refuse)
        replace = getattr(handler, "_replace", None)
        if replace is not None:  # grpc's handlers are named tuples
            return replace(**changes)  # type: ignore[no-any-return]
        return _rebuilt(handler, changes)

    def _refuse(
        self, method: str, name: str, request: Malformed, context: grpc.ServicerContext
    ) -> None:
        now = self._clock()
        with self._lock:
            self.refused += 1
            last = self._last_logged.get(method)
            if last is not None and now - last < self._interval:
                self._unlogged[method] = self._unlogged.get(method, 0) + 1
                unlogged = -1
            else:
                self._last_logged[method] = now
                unlogged = self._unlogged.pop(method, 0)
        if unlogged >= 0:
            logger.warning(
                "%s: refused a request body that is not a valid %s (%s)%s",
                method,
                name,
                request.error,
                f"; {unlogged} more since the last line" if unlogged else "",
            )
        why = f"the request body is not a valid {name} ({request.error})"
        context.abort_with_status(to_status(InvalidArgument([("", why)], why)))


def _unary(
    behaviour: Callable[[Any, grpc.ServicerContext], Any],
    refuse: Callable[[Malformed, grpc.ServicerContext], None],
) -> Callable[[Any, grpc.ServicerContext], Any]:
    def checked(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            refuse(request, context)
        return behaviour(request, context)

    return checked


def _streaming(
    behaviour: Callable[[Iterator[Any], grpc.ServicerContext], Any],
    refuse: Callable[[Malformed, grpc.ServicerContext], None],
) -> Callable[[Iterator[Any], grpc.ServicerContext], Any]:
    def checked(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        return behaviour(_CheckedRequests(requests, lambda m: refuse(m, context)), context)

    return checked


def _rebuilt(handler: grpc.RpcMethodHandler, changes: dict[str, Any]) -> grpc.RpcMethodHandler:
    """A handler that is not a named tuple, rebuilt with grpc's factories."""
    serializer = handler.response_serializer
    parse = changes["request_deserializer"]
    if "stream_stream" in changes:
        return grpc.stream_stream_rpc_method_handler(changes["stream_stream"], parse, serializer)
    if "stream_unary" in changes:
        return grpc.stream_unary_rpc_method_handler(changes["stream_unary"], parse, serializer)
    if "unary_stream" in changes:
        return grpc.unary_stream_rpc_method_handler(changes["unary_stream"], parse, serializer)
    return grpc.unary_unary_rpc_method_handler(changes["unary_unary"], parse, serializer)
