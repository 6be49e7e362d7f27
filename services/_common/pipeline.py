"""The server's interceptor chain, built once per method instead of once per call (issue 9).

grpc's Python server calls every interceptor's `intercept_service` on every call, and each one
builds a new `RpcMethodHandler` around the next (closures, and `grpc.*_rpc_method_handler`,
which runs an import each time). What each of ours builds depends only on the method and the
handler inside it: the caller's metadata, peer, certificate and deadline are read from the
`context` when the call runs (the metrics, malformed-body, shedding and authentication
interceptors here; the shedder's limits too, which may change live; and OpenTelemetry's, which
reads only `.method` from the call details, and the trace context from the call's metadata). So
the wrapped handler of a method is the same for every call, and `MethodPipeline` keeps it.

On a call it asks grpc for the method's own handler (a dict look-up): None is an unknown method,
answered UNIMPLEMENTED and never kept, so made-up method names cannot grow the cache. Otherwise
it returns the chain it built for that handler, building it on the first call by running the
interceptors, in order, on call details that carry the method alone and no metadata (so nothing
kept can depend on one caller's metadata).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import grpc

Continuation = Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None]


class _MethodOnly(NamedTuple):
    """Call details naming the method and nothing of a caller (grpc's own are this shape)."""

    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...] = ()


class MethodPipeline(grpc.ServerInterceptor):
    """Run `interceptors` (outermost first, as grpc's `interceptors=` list) once per method and
    answer every later call of that method with the handler they built."""

    def __init__(self, interceptors: Sequence[grpc.ServerInterceptor]) -> None:
        self.interceptors = tuple(interceptors)
        # method -> (grpc's handler for it, the chain built around that handler)
        self._built: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._lock = threading.Lock()
        self.builds = 0  # chains built since the start: one per method served

    @property
    def methods(self) -> frozenset[str]:
        """The methods whose chain is built."""
        return frozenset(self._built)

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: grpc answers UNIMPLEMENTED; nothing is kept
        method: str = handler_call_details.method
        built = self._built.get(method)
        # Compared by identity: a server's handlers do not change, but if one ever did, the
        # chain around the old one must not answer for it.
        if built is not None and built[0] is handler:
            return built[1]
        with self._lock:
            built = self._built.get(method)
            if built is not None and built[0] is handler:
                return built[1]
            wrapped = self._build(method, handler)
            if wrapped is not None:
                self._built[method] = (handler, wrapped)
                self.builds += 1
        return wrapped

    def _build(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler | None:
        def innermost(_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            return handler

        chain: Continuation = innermost
        for interceptor in reversed(self.interceptors):
            chain = partial(interceptor.intercept_service, chain)
        return chain(_MethodOnly(method))
