"""A colour replica follows the real risk index over gRPC with deltas, keeps its own snapshot,
and after a restart resumes from it with the changes since, not a whole snapshot (issue 8)."""

from __future__ import annotations

import threading
from pathlib import Path

import healthcode_matcher as hm
from healthcode.v1 import risk_index_pb2

from services.colour.engine import ColourEngine
from services.colour.follower import IndexFollower
from services.colour.rulestore import compile_rules
from services.rules import DEFAULT_RULE_SET_PATH, load_rule_set
from tests.service.test_risk_index_service import Running, ingest, rows, start
from tests.support import SECRET, wait_until

IDS = hm.synthetic_id_numbers(6, 31337).decode().split()
HASHER = hm.Hasher(SECRET)
RULES = compile_rules(load_rule_set(DEFAULT_RULE_SET_PATH))


class Replica:
    def __init__(self, risk_index: Running, snapshot: Path) -> None:
        self.engine = ColourEngine(SECRET, RULES)
        self.current = threading.Event()
        self.follower = IndexFollower(
            self.engine,
            f"127.0.0.1:{risk_index.port}",
            SECRET,
            max_backoff_s=0.2,
            on_installed=lambda _v: self.current.set(),
            snapshot_path=snapshot,
        )
        self.follower.start()

    def colour(self, id_number: str) -> hm.Colour | None:
        return self.engine.evaluate(HASHER.person_key(id_number)).colour


def test_a_replica_follows_with_deltas_and_resumes_from_its_own_snapshot(tmp_path: Path) -> None:
    risk_index = start(tmp_path / "ri")
    snapshot = tmp_path / "colour" / "index.snapshot"
    try:
        ingest(risk_index.stub, "close_contact", "b1", rows(IDS[:2]))
        first = Replica(risk_index, snapshot)
        try:
            wait_until("the replica holds version 1", lambda: first.engine.index_version == 1)
            version = ingest(risk_index.stub, "confirmed", "b2", rows(IDS[2:3])).index_version
            wait_until("the replica holds version 2", lambda: first.engine.index_version == version)
            # One whole version to start, then the change alone.
            assert (first.follower.snapshots_loaded, first.follower.deltas_applied) == (1, 1)
            status = first.engine.status()
            assert (
                status.deltas_applied == 1
                and 0 < status.delta_apply_ms[0] <= status.delta_apply_ms[2]
            )
            assert first.colour(IDS[2]) == hm.Colour.RED
        finally:
            first.follower.stop()  # keeps its snapshot
        assert hm.Index.load(str(snapshot), SECRET).version == 2

        # While the replica is down, the city moves on.
        ingest(risk_index.stub, "close_contact", "b3", rows(IDS[3:4]))
        latest = ingest(risk_index.stub, "close_contact", "b4", rows(IDS[4:5])).index_version

        second = Replica(risk_index, snapshot)
        try:
            wait_until(
                "the restarted replica catches up", lambda: second.engine.index_version == latest
            )
            assert second.follower.snapshots_loaded == 0  # resumed from its own snapshot
            assert second.follower.deltas_applied == 1  # one delta from 2 to 4
            assert [second.colour(i) for i in IDS[:5]] == [hm.Colour.RED] * 5
            assert second.colour(IDS[5]) is None  # never registered
        finally:
            second.follower.stop()

        # Nothing new since: the replica is told it is current, so it can serve at once.
        third = Replica(risk_index, snapshot)
        try:
            wait_until("the replica hears it is current", third.current.is_set)
            assert third.engine.index_version == latest
            assert (third.follower.snapshots_loaded, third.follower.deltas_applied) == (0, 0)
        finally:
            third.follower.stop()

        # A damaged snapshot is refused, and the risk index sends a whole one.
        snapshot.write_bytes(b"not a snapshot")
        fourth = Replica(risk_index, snapshot)
        try:
            wait_until(
                "the replica holds the latest", lambda: fourth.engine.index_version == latest
            )
            assert fourth.follower.snapshots_loaded == 1
        finally:
            fourth.follower.stop()
    finally:
        risk_index.close()


def test_get_index_version_names_what_is_accepted(tmp_path: Path) -> None:
    risk_index = start(tmp_path)
    try:
        reply = ingest(risk_index.stub, "close_contact", "b1", rows(IDS[:1]))
        got = risk_index.stub.GetIndexVersion(risk_index_pb2.GetIndexVersionRequest())
        assert got.accepted_version == got.version == reply.index_version == 1
    finally:
        risk_index.close()
