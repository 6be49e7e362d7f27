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

With `max_queue_wait_s` a call is also refused when it waited longer than that for a server
thread (`QueueTimedPool` notes when grpc handed it over); the display uses it (250 ms).

What neither limit prevents (BENCHMARKS.md, "The midnight CANCELLED, found"): grpc's
synchronous server accepts every call on one thread, which needs the GIL between any two calls.
With dozens of handler threads busy it gets it too rarely, calls pile up inside grpc's core
unaccepted, and past 1,000 of them the core cancels them at random (CANCELLED, no retry
advice). Few threads avoid that (`HEALTHCODE_DISPLAY_WORKERS=8`: calls are accepted and wait in
the pool's queue, where the wait limit refuses them with RetryInfo), but a call that waits on a
database commit or a peer then holds one of only a few threads: on PostgreSQL the display
answered a third as many Shows. The display keeps 64 threads; the lasting fix is a server that
does not need a thread to wait (grpc.aio).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent import futures
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


_queued_at = threading.local()


class QueueTimedPool(futures.ThreadPoolExecutor):
    """A thread pool that notes, for the task a thread runs, when it was handed over: grpc's
    server submits each call's handler here, so the shedder knows how long the call waited."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        handed_over = time.monotonic()

        def timed() -> Any:
            _queued_at.value = handed_over
            try:
                return fn(*args, **kwargs)
            finally:
                _queued_at.value = None

        return super().submit(timed)


def queue_wait_s() -> float | None:
    """How long the call this thread runs waited for it (None outside a QueueTimedPool)."""
    handed_over = getattr(_queued_at, "value", None)
    return None if handed_over is None else time.monotonic() - handed_over


class Shedder(grpc.ServerInterceptor):
    """Refuse unary calls past the limits with RESOURCE_EXHAUSTED and a retry delay."""

    def __init__(
        self,
        limit: int,
        secondary_limit: int | None = None,
        retry_after_s: float = 0.2,
        max_queue_wait_s: float | None = None,
    ) -> None:
        self.limit = limit
        self.secondary_limit = max(1, limit // 4) if secondary_limit is None else secondary_limit
        self.max_queue_wait_s = max_queue_wait_s
        self._retry_after_s = retry_after_s
        # How long the latest call waited for a thread (with max_queue_wait_s).
        self.recent_wait_s = 0.0
        self._lock = threading.Lock()
        self._in_flight = 0
        self.shed = 0  # calls refused since the start (a gauge for GetStatus and metrics)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def busy(self) -> bool:
        """Whether secondary content is being shed now: a call that can do without it (a
        Show's reasons) should leave it out. Past `secondary_limit` calls in progress, or, with
        `max_queue_wait_s`, once calls wait half of it for a thread."""
        max_wait = self.max_queue_wait_s
        return self._in_flight > self.secondary_limit or (
            max_wait is not None and self.recent_wait_s > max_wait / 2
        )

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
            max_wait = self.max_queue_wait_s
            waited = queue_wait_s() if max_wait is not None else None
            late = False
            if waited is not None and max_wait is not None:
                self.recent_wait_s = waited
                # Secondary calls are shed first: at half the wait.
                late = waited > (max_wait / 2 if secondary else max_wait)
            with self._lock:
                admitted = self._in_flight < limit and not late
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
                why = (
                    f"calls wait {1000 * (waited or 0):.0f} ms for a thread"
                    if late
                    else f"{limit} calls in progress"
                )
                context.abort_with_status(
                    to_status(
                        Overloaded(
                            f"the service is overloaded ({why}); retry in {delay:.1f} s", delay
                        )
                    )
                )
            try:
                return behaviour(request, context)
            finally:
                with self._lock:
                    self._in_flight -= 1

        return guarded
