"""Follows RiskIndexService.WatchIndex and hands each complete index version to the engine.

A replica that holds no version is sent a snapshot in chunks; it is loaded (checked:
`Index.from_bytes` refuses a corrupt, truncated or foreign-keyed snapshot) only once its last
chunk is in, so a broken stream can never install half a version. After that each version comes
as a delta (the changes since the version held), applied by the engine in time that grows with
the delta. When the stream breaks, the follower reconnects with exponential backoff and jitter,
telling the risk index the version it holds, and is sent the deltas since (or a snapshot, if the
risk index no longer keeps them).

It also asks `ListSources` when each feed was last updated: after every version, and every
`freshness_interval_s` on a thread of its own, because a stalled feed publishes no versions and
that is exactly when its staleness must show (the engine judges staleness by the clock, so the
verdicts turn stale even when the risk index cannot be reached).
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
from collections.abc import Callable

import grpc
import healthcode_matcher as hm
from healthcode.v1 import risk_index_pb2, risk_index_pb2_grpc

from services._common import changes
from services.colour.engine import ColourEngine

log = logging.getLogger(__name__)

# Chunks are at most 1 MiB; leave room for the envelope.
_CHANNEL_OPTIONS: list[tuple[str, int | str]] = [("grpc.max_receive_message_length", 8 << 20)]


class IndexFollower:
    """A background thread keeping `engine` on the risk index's latest version."""

    def __init__(
        self,
        engine: ColourEngine,
        risk_index_addr: str,
        secret: bytes,
        *,
        initial_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        freshness_interval_s: float = 30.0,
        on_installed: Callable[[int], None] | None = None,
    ) -> None:
        self._engine = engine
        self._on_installed = on_installed
        self._secret = secret
        self._initial = initial_backoff_s
        self._max = max_backoff_s
        self._freshness_interval = freshness_interval_s
        # A plain channel: the OpenTelemetry client interceptor turns a response stream into a
        # bare generator that cannot be cancelled, and stop() must cancel the watch. A stream
        # that lives for days is no use as one trace anyway.
        self._channel = grpc.insecure_channel(risk_index_addr, _CHANNEL_OPTIONS)
        self._stub = risk_index_pb2_grpc.RiskIndexServiceStub(self._channel)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._call: grpc.Call | None = None
        self._thread = threading.Thread(target=self._run, name="index-follower", daemon=True)
        self._freshness_thread = threading.Thread(
            target=self._refresh_periodically, name="feed-freshness", daemon=True
        )
        self.versions_installed = 0

    def start(self) -> None:
        self._thread.start()
        self._freshness_thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._call is not None:
                self._call.cancel()
        self._thread.join(timeout=10)
        if self._freshness_thread.is_alive():
            self._freshness_thread.join(timeout=10)
        self._channel.close()

    def _run(self) -> None:
        delay = self._initial
        while not self._stop.is_set():
            try:
                if self._follow_once():
                    delay = self._initial
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                code = exc.code() if isinstance(exc, grpc.Call) else None
                log.warning("index stream broke (%s); reconnecting in %.1fs", code, delay)
            except hm.SnapshotError as exc:
                log.error("refused an index snapshot: %s; reconnecting in %.1fs", exc, delay)
            except Exception:
                log.exception("index follower failed; reconnecting in %.1fs", delay)
            # Full jitter keeps many replicas from reconnecting in lockstep after an outage.
            if self._stop.wait(random.uniform(delay / 2, delay)):
                return
            delay = min(delay * 2, self._max)

    def _follow_once(self) -> bool:
        """Read one stream until it ends; True if at least one version was installed."""
        known = self._engine.index_version
        call = self._stub.WatchIndex(
            risk_index_pb2.WatchIndexRequest(known_version=known), wait_for_ready=True
        )
        with self._lock:
            if self._stop.is_set():
                call.cancel()
                return False
            self._call = call
        installed = False
        chunks: list[bytes] = []
        version = -1
        expected_chunk = 0
        for message in call:
            if message.HasField("delta"):
                if self._apply_delta(message):
                    installed = True
                    continue
                call.cancel()  # not the version held: reconnect, saying which one that is
                return installed
            if message.chunk_index == 0:
                chunks, version, expected_chunk = [], message.version, 0
            if message.version != version or message.chunk_index != expected_chunk:
                # A gap or a mixed version: drop what we have; the stream (or a reconnect)
                # will resend a whole snapshot.
                log.warning(
                    "index stream out of order (version %d chunk %d); reconnecting",
                    message.version,
                    message.chunk_index,
                )
                call.cancel()
                return installed
            chunks.append(message.data)
            expected_chunk += 1
            if not message.last_chunk:
                continue
            data = b"".join(chunks)
            chunks = []
            if message.total_size and len(data) != message.total_size:
                raise hm.SnapshotError(
                    f"version {version}: got {len(data)} bytes, expected {message.total_size}"
                )
            index = hm.Index.from_bytes(data, self._secret)
            if index.version != version:
                raise hm.SnapshotError(
                    f"version {version}: the snapshot says it is version {index.version}"
                )
            if self._engine.install_index(index):
                self.versions_installed += 1
                if self._on_installed is not None:
                    self._on_installed(version)
            installed = True
            self._refresh_staleness()
        return installed

    def _apply_delta(self, message: risk_index_pb2.WatchIndexResponse) -> bool:
        """Apply one delta; False if it does not start from the version held."""
        held = self._engine.index_version
        if not self._engine.has_index or message.delta.from_version != held:
            log.warning(
                "index delta from version %d does not fit the version held (%d); reconnecting",
                message.delta.from_version,
                held,
            )
            return False
        if self._engine.apply_changes(changes.from_proto(message.delta), message.version):
            self.versions_installed += 1
            if self._on_installed is not None:
                self._on_installed(message.version)
        self._refresh_staleness()
        return True

    def _refresh_staleness(self) -> bool:
        try:
            response = self._stub.ListSources(risk_index_pb2.ListSourcesRequest(), timeout=5)
        except grpc.RpcError:
            # Keep the last known times: the engine still ages them by the clock.
            return False
        self._engine.set_feed_times(
            {
                s.name: s.last_updated.ToDatetime(dt.UTC) if s.HasField("last_updated") else None
                for s in response.sources
            }
        )
        return True

    def _refresh_periodically(self) -> None:
        while not self._stop.wait(self._freshness_interval):
            self._refresh_staleness()
