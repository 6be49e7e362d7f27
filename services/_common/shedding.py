"""Load shedding: under overload a service answers RESOURCE_EXHAUSTED with RetryInfo at once,
instead of queueing calls until every caller times out (issue 9; Xi'an's code collapsed at ten
times its usual peak, twice).

A server interceptor counts the unary calls in their handlers. Past `limit` a new call is refused
before any work; secondary calls (explanations, what-ifs, status pages, source lists: content a
person can do without at midnight) are refused already past `secondary_limit`, so they are shed
before the colour itself. The server's thread pool is larger than `limit`, so the excess is
picked up and refused in microseconds rather than waiting for a thread; beyond that grpc's own
`maximum_concurrent_rpcs` refuses at the door (RESOURCE_EXHAUSTED too, without RetryInfo).

Streams (WatchIndex, WatchCounters, EvaluateStream) live for minutes and are not counted; health
checks and reflection are never shed.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

import grpc

from services._common.errors import Overloaded
from services._common.status import to_status

logger = logging.getLogger(__name__)

# Content a caller can do without when the service is overloaded: shed first.
SECONDARY = frozenset(
    {"Explain", "WhatIf", "GetStatus", "ListSources", "GetVerificationKey", "GetIndexVersion"}
)
_NEVER_SHED = ("/grpc.health.", "/grpc.reflection.")


class Shedder(grpc.ServerInterceptor):
    """Refuse unary calls past the limits with RESOURCE_EXHAUSTED and a retry delay."""

    def __init__(
        self, limit: int, secondary_limit: int | None = None, retry_after_s: float = 0.2
    ) -> None:
        self.limit = limit
        self.secondary_limit = max(1, limit // 4) if secondary_limit is None else secondary_limit
        self._retry_after_s = retry_after_s
        self._lock = threading.Lock()
        self._in_flight = 0
        self.shed = 0  # calls refused since the start (a gauge for GetStatus and metrics)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def busy(self) -> bool:
        """Whether secondary content is being shed now: a call that can do without it (a
        Show's reasons) should leave it out."""
        return self._in_flight > self.secondary_limit

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or handler.response_streaming or method.startswith(_NEVER_SHED):
            return handler
        secondary = method.rsplit("/", 1)[-1] in SECONDARY
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                self._guard(handler.stream_unary, secondary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            self._guard(handler.unary_unary, secondary, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _guard(self, behaviour: Any, secondary: bool, method: str) -> Callable[[Any, Any], Any]:
        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            # Read at each call, not when the handler is wrapped: the wrapped handler is kept
            # per method (services/_common/pipeline.py) and the limits may be changed live.
            limit = self.secondary_limit if secondary else self.limit
            with self._lock:
                admitted = self._in_flight < limit
                if admitted:
                    self._in_flight += 1
                else:
                    self.shed += 1
                    shed = self.shed
            if not admitted:
                if shed % 1000 == 1:  # one line per thousand, not one per call
                    logger.warning("overloaded: shedding calls (%d so far, last %s)", shed, method)
                # Jitter, so that refused callers do not all come back in the same instant.
                delay = self._retry_after_s * random.uniform(1.0, 2.0)
                context.abort_with_status(
                    to_status(
                        Overloaded(
                            f"the service is overloaded ({limit} calls in progress); "
                            f"retry in {delay:.1f} s",
                            delay,
                        )
                    )
                )
            try:
                return behaviour(request, context)
            finally:
                with self._lock:
                    self._in_flight -= 1

        return guarded
