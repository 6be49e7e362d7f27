"""Keepalive on long streams (issue 12, item 3): a half-open connection under a quiet server
stream is noticed by pings, on the client's side (the stream ends UNAVAILABLE) and on the
server's (the handler sees its call end and frees its thread).

The connection goes through a proxy that stops forwarding without closing anything
(tests/halfopen.py): neither side gets a FIN or a reset. Two watchers share the proxy, one with
the platform's keepalive options and one without; the one without is still open when the other
has ended, so the end came from the pings, not from anything else. No timing is asserted: the
waits are upper bounds only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from services._common import config
from services._common.config import Keepalive
from tests.halfopen import HalfOpenProxy

# Short enough for a test; the platform's defaults are 20 s and 10 s.
FAST = Keepalive(time_ms=1000, timeout_ms=1000)
WATCH = "/test.Watcher/Watch"


class Watches:
    """A quiet server stream: one message, then nothing until the call ends."""

    def __init__(self) -> None:
        self.ended: dict[bytes, threading.Event] = {}

    def watch(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        ended = self.ended.setdefault(request, threading.Event())
        context.add_callback(ended.set)
        yield b"version 1"
        ended.wait(120)  # a watch waits for the next version; here there is none


@pytest.fixture
def watched() -> Iterator[tuple[Watches, HalfOpenProxy]]:
    watches = Watches()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=FAST.server_options())
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Watcher", {"Watch": grpc.unary_stream_rpc_method_handler(watches.watch)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with HalfOpenProxy(port) as proxy:
        yield watches, proxy
    server.stop(None)


def _watch(channel: grpc.Channel, name: bytes) -> grpc.Call:
    call = channel.unary_stream(WATCH)(name, timeout=120)
    assert next(call) == b"version 1"
    return call  # type: ignore[no-any-return]


def test_a_half_open_watch_ends_unavailable_with_keepalive_and_not_without(
    watched: tuple[Watches, HalfOpenProxy],
) -> None:
    watches, proxy = watched
    target = f"127.0.0.1:{proxy.port}"
    with (
        grpc.insecure_channel(target, options=FAST.client_options()) as pinging,
        grpc.insecure_channel(target) as silent,
    ):
        with_pings = _watch(pinging, b"pinging")
        without = _watch(silent, b"silent")
        assert proxy.freeze() == 2

        with pytest.raises(grpc.RpcError) as ended:
            next(with_pings)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        # The server's own pings end both calls on its side: the threads are freed.
        assert watches.ended[b"pinging"].wait(60)
        assert watches.ended[b"silent"].wait(60)
        # A client without pings cannot tell: its stream still looks open.
        assert without.is_active()
        without.cancel()

        # The channel with pings comes back on a fresh connection (the follower's way back).
        assert _watch(pinging, b"again") is not None
        assert proxy.accepted == 3


def test_the_server_accepts_pings_as_often_as_clients_send_them(
    watched: tuple[Watches, HalfOpenProxy],
) -> None:
    """A server answers pings more frequent than its min interval with GOAWAY too_many_pings,
    which would end every watch: ours allows the clients' period. Through the proxy (not
    frozen) a quiet watch outlives several ping periods."""
    watches, proxy = watched
    with grpc.insecure_channel(f"127.0.0.1:{proxy.port}", options=FAST.client_options()) as channel:
        call = _watch(channel, b"long")
        deadline = time.monotonic() + 5 * FAST.time_ms / 1000
        while time.monotonic() < deadline:
            assert call.is_active()
            time.sleep(0.2)
        assert not watches.ended[b"long"].is_set()
        call.cancel()


def test_every_channel_and_server_of_the_platform_pings() -> None:
    options = dict(config.RECONNECT_OPTIONS)
    assert options["grpc.keepalive_time_ms"] == config.KEEPALIVE.time_ms
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.http2.max_pings_without_data"] == 0
    # Without it grpc waits 60 s for a ping's answer whatever keepalive_timeout_ms says.
    assert options["grpc.http2.ping_timeout_ms"] == config.KEEPALIVE.timeout_ms
    server = dict(config.KEEPALIVE.server_options())
    assert int(server["grpc.http2.min_ping_interval_without_data_ms"]) <= config.KEEPALIVE.time_ms


def test_keepalive_settings_from_the_environment() -> None:
    assert Keepalive.from_env({}) == Keepalive(20_000, 10_000)
    got = Keepalive.from_env(
        {"HEALTHCODE_KEEPALIVE_TIME_MS": "5000", "HEALTHCODE_KEEPALIVE_TIMEOUT_MS": "2000"}
    )
    assert got == Keepalive(5000, 2000)
    with pytest.raises(config.ConfigError, match="HEALTHCODE_KEEPALIVE_TIME_MS"):
        Keepalive.from_env({"HEALTHCODE_KEEPALIVE_TIME_MS": "10"})
