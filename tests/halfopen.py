"""A TCP proxy on loopback that can make its connections half-open: `freeze()` stops forwarding
on every connection open at that moment without closing either side, as a crashed machine, a
pulled cable or a NAT that forgot the flow would. Neither end gets a FIN or a reset; only
keepalive pings can tell the connection is dead. Connections opened after a freeze are
forwarded normally (the peer's way back)."""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from typing import Self


class _Link:
    """One proxied connection: two pumps, frozen together."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.frozen = threading.Event()
        self.closed = threading.Event()
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self.frozen.is_set():
                data = source.recv(65536)
                if self.frozen.is_set():
                    return  # swallowed: nothing passes once frozen
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        if not self.frozen.is_set():
            self.close()

    def close(self) -> None:
        self.closed.set()
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class HalfOpenProxy:
    """`with HalfOpenProxy(upstream_port) as proxy:` listens on `proxy.port`."""

    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self._upstream = (host, upstream_port)
        self._listener = socket.create_server((host, 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self.accepted = 0  # connections accepted since the start
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, name="half-open-proxy", daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._links.append(_Link(client, upstream))
                self.accepted += 1

    def freeze(self) -> int:
        """Stop forwarding on every connection open now (sockets stay open); how many."""
        with self._lock:
            live = [link for link in self._links if not link.closed.is_set()]
        for link in live:
            link.frozen.set()
        return len(live)

    def close(self) -> None:
        self._stopped.set()
        self._listener.close()
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()
