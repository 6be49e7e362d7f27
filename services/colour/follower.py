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

Manual colour overrides ride along: a delta's override changes are applied with it, and a
stream's first version carries every override in force, taken before that version goes live.
They are kept beside the replica's own snapshot, so a restart answers with them at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import healthcode_matcher as hm
from google.protobuf.message import DecodeError
from healthcode.v1 import risk_index_pb2, risk_index_pb2_grpc

from services._common import changes
from services._common.auth import process_security, secure_channel
from services._common.config import RECONNECT_OPTIONS
from services._common.shared_keys import share_keys
from services.colour.engine import ColourEngine

log = logging.getLogger(__name__)

# Snapshot chunks are at most 1 MiB, a delta at most 32 MiB (MAX_DELTA_BYTES in
# services/risk_index/logic.py). The follower's own loop backs off between attempts; the
# channel's reconnect backoff (grpc's default grows to 120 s) is held to a second, so a
# replica is back within a second of the risk index.
_CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_receive_message_length", 64 << 20),
    *RECONNECT_OPTIONS,
]


def overrides_path(snapshot: Path) -> Path:
    """Where a replica keeps its manual overrides beside its index snapshot."""
    return snapshot.with_name(snapshot.name + ".overrides")


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
        on_changes: Callable[[Sequence[changes.Change]], None] | None = None,
        snapshot_path: Path | None = None,
        snapshot_interval_s: float = 300.0,
        shared_keys_dir: Path | None = None,
    ) -> None:
        self._engine = engine
        self._shared_keys_dir = shared_keys_dir
        self._on_installed = on_installed
        # Told each delta's changes once applied (a display drops the holders they touch
        # from its cache).
        self._on_changes = on_changes
        self._secret = secret
        self._initial = initial_backoff_s
        self._max = max_backoff_s
        self._freshness_interval = freshness_interval_s
        # A plain channel: the OpenTelemetry client interceptor turns a response stream into a
        # bare generator that cannot be cancelled, and stop() must cancel the watch. A stream
        # that lives for days is no use as one trace anyway.
        self._channel = secure_channel(risk_index_addr, process_security(), _CHANNEL_OPTIONS)
        self._stub = risk_index_pb2_grpc.RiskIndexServiceStub(self._channel)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._call: grpc.Call | None = None
        self._thread = threading.Thread(target=self._run, name="index-follower", daemon=True)
        self._freshness_thread = threading.Thread(
            target=self._refresh_periodically, name="feed-freshness", daemon=True
        )
        self.versions_installed = 0
        self.snapshots_loaded = 0  # whole versions received (the first, or after a gap)
        self.deltas_applied = 0
        # The replica's own copy of the latest index, so a restart resumes with the deltas
        # since it instead of a whole snapshot from the risk index.
        self._snapshot_path = snapshot_path
        self._snapshot_interval = snapshot_interval_s
        self._saved_version = -1
        self._snapshot_thread = threading.Thread(
            target=self._save_periodically, name="replica-snapshots", daemon=True
        )

    def start(self) -> None:
        self.resume_from_snapshot()
        self._thread.start()
        self._freshness_thread.start()
        if self._snapshot_path is not None and self._snapshot_interval > 0:
            self._snapshot_thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._call is not None:
                self._call.cancel()
        self._thread.join(timeout=10)
        for thread in (self._freshness_thread, self._snapshot_thread):
            if thread.is_alive():
                thread.join(timeout=60)
        self._channel.close()
        try:
            self.save_snapshot()
        except Exception:
            log.exception("writing the replica's index snapshot at stop failed")

    def resume_from_snapshot(self) -> bool:
        """Install the replica's own snapshot, if there is a usable one; the stream then asks
        for the changes since its version. A corrupt or foreign one is refused (logged) and
        the risk index sends a whole snapshot instead."""
        path = self._snapshot_path
        if path is None or not path.is_file():
            return False
        start = time.perf_counter()
        try:
            index = share_keys(hm.Index.load(str(path), self._secret), self._shared_keys_dir, log)
            self._engine.install_index(index)
        except (hm.SnapshotError, hm.InvalidOperation, hm.PlanError, OSError) as exc:
            log.warning(
                "own index snapshot %s refused (%s); the risk index will send a whole one",
                path,
                exc,
            )
            return False
        self._saved_version = index.version
        self._resume_overrides(path)
        log.info(
            "resumed from own index snapshot at version %d in %.1f s",
            index.version,
            time.perf_counter() - start,
        )
        return True

    def save_snapshot(self) -> bool:
        """Write the index held to the replica's snapshot file unless it is there already, and
        the manual overrides held beside it (read after the index: at least as new)."""
        index = self._engine.index
        if self._snapshot_path is None or index is None or index.version == self._saved_version:
            return False
        self._snapshot_path.parent.mkdir(parents=True, exist_ok=True)
        index.save(str(self._snapshot_path))
        self._save_overrides(self._snapshot_path)
        self._saved_version = index.version
        return True

    def _save_overrides(self, snapshot: Path) -> None:
        """The overrides held, as the stream's first version carries them (keys, masked
        actors and reasons only), written atomically beside the snapshot: a replica that
        restarts from its snapshot answers with them before it reaches the risk index."""
        active, last_seq = self._engine.overrides()
        wire = risk_index_pb2.ActiveOverrides(
            overrides=[changes.override_to_proto(o) for o in active], last_seq=last_seq
        )
        target = overrides_path(snapshot)
        part = target.with_name(target.name + ".part")
        part.write_bytes(wire.SerializeToString())
        os.replace(part, target)

    def _resume_overrides(self, snapshot: Path) -> None:
        path = overrides_path(snapshot)
        if not path.is_file():
            return
        try:
            wire = risk_index_pb2.ActiveOverrides.FromString(path.read_bytes())
            active = [changes.override_from_proto(o, str(path)) for o in wire.overrides]
        except (DecodeError, ValueError, OSError) as exc:
            log.warning("own overrides %s refused (%s); the risk index will send them", path, exc)
            return
        self._engine.replace_overrides(active, wire.last_seq)

    def _save_periodically(self) -> None:
        while not self._stop.wait(self._snapshot_interval):
            try:
                self.save_snapshot()
            except Exception:
                log.exception("writing the replica's index snapshot failed; the previous stays")

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
            self.snapshots_loaded += 1
            if index.version != version:
                raise hm.SnapshotError(
                    f"version {version}: the snapshot says it is version {index.version}"
                )
            # Its keys from the machine's shared key files (services/_common/shared_keys.py).
            index = share_keys(index, self._shared_keys_dir, log)
            self._follow_overrides(message)  # before the version goes live
            new = self._engine.install_index(index)
            self._follow_rule_set(message)
            if new:
                self.versions_installed += 1
                if self._on_installed is not None:
                    self._on_installed(version)
            installed = True
            self._refresh_staleness()
        return installed

    def _apply_delta(self, message: risk_index_pb2.WatchIndexResponse) -> bool:
        """Apply one delta; False if it does not start from the version held. An empty delta
        to the version held says the replica is current (after a restart from its snapshot)."""
        held = self._engine.index_version
        if self._engine.has_index and message.version == held == message.delta.from_version:
            self._follow_overrides(message)
            self._follow_rule_set(message)
            if self._on_installed is not None:
                self._on_installed(held)
            return True
        if not self._engine.has_index or message.delta.from_version != held:
            log.warning(
                "index delta from version %d does not fit the version held (%d); reconnecting",
                message.delta.from_version,
                held,
            )
            return False
        delta = changes.from_proto(message.delta)
        # Before the version goes live (its own override changes at or below the list's
        # last entry are then already held).
        self._follow_overrides(message)
        if self._engine.apply_changes(delta, message.version):
            if self._on_changes is not None:
                self._on_changes(delta)
            self.deltas_applied += 1
            self.versions_installed += 1
            self._follow_rule_set(message)
            if self._on_installed is not None:
                self._on_installed(message.version)
        self._refresh_staleness()
        return True

    def _follow_rule_set(self, message: risk_index_pb2.WatchIndexResponse) -> None:
        # A stream's first version names the rule set last published (R5: every replica
        # runs the same rules), so a replica that was away while one was published catches up.
        if message.HasField("rule_set"):
            self._engine.follow_rule_set(message.rule_set.text, message.rule_set.filename)

    def _follow_overrides(self, message: risk_index_pb2.WatchIndexResponse) -> None:
        # A stream's first version carries every manual override in force, so a replica that
        # was away (or is new) shows the same ones as every other.
        if not message.HasField("active_overrides"):
            return
        wire = message.active_overrides
        try:
            active = [changes.override_from_proto(o, "active_overrides") for o in wire.overrides]
        except ValueError as exc:
            log.error("refused the overrides in force (%s); keeping those held", exc)
            return
        self._engine.replace_overrides(active, wire.last_seq)

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
