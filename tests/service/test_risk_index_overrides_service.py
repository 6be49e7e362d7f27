"""Manual colour overrides through RiskIndexService in process (issue 10, item 4): set, cleared
and listed over gRPC; every WatchIndex stream's first message carries the overrides in force,
also after a restart of the risk index, so a new or restarted replica shows the same ones."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import grpc
import healthcode_matcher
import pytest
from healthcode.v1 import common_pb2, risk_index_pb2

from services._common import changes
from services._common.identifiers import mask_id_number
from services._common.status import field_violations
from services.risk_index.logic import Published
from tests.service.test_risk_index_service import IDS, Running, start
from tests.support import SECRET

SUPPORT = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_SUPPORT, principal="desk-2")
ADMIN = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="root")
REPO = Path(__file__).resolve().parents[2]
SERVICE = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_SERVICE, principal="declaration")
PERSON = IDS[0]
REASON = "appeal 2024-117: a verified negative test at the hospital"


def _first_message(
    r: Running, known_version: int = 0
) -> tuple[risk_index_pb2.WatchIndexResponse, int]:
    """The message that completes a stream's first version (a delta, or a snapshot's last
    chunk), and how many messages that took."""
    call = r.stub.WatchIndex(risk_index_pb2.WatchIndexRequest(known_version=known_version))
    try:
        for n, message in enumerate(call, 1):
            if message.HasField("delta") or message.last_chunk:
                return message, n
        raise AssertionError("the stream ended before its first version")
    finally:
        call.cancel()


def _override(r: Running, until: dt.datetime) -> risk_index_pb2.OverrideColourResponse:
    request = risk_index_pb2.OverrideColourRequest(
        actor=SUPPORT,
        person=common_pb2.PersonRef(id_number=PERSON),
        colour=common_pb2.COLOUR_GREEN,
        reason=REASON,
    )
    request.valid_until.FromDatetime(until)
    return r.stub.OverrideColour(request)  # type: ignore[no-any-return]


@pytest.fixture()
def running(tmp_path: Path) -> Iterator[Running]:
    r = start(tmp_path)
    yield r
    r.close()


def _register(r: Running) -> None:
    r.stub.RegisterPerson(
        risk_index_pb2.RegisterPersonRequest(
            actor=SERVICE,
            person_key=healthcode_matcher.Hasher(SECRET).person_key(PERSON),
            masked_id_number=mask_id_number(PERSON),
        )
    )


def test_the_first_message_of_every_stream_carries_the_overrides_in_force(
    tmp_path: Path,
) -> None:
    r = start(tmp_path)
    until = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=2)
    try:
        _register(r)
        # Before any override: the field is there, and empty.
        first, _ = _first_message(r)
        assert first.HasField("active_overrides") and not first.active_overrides.overrides
        done = _override(r, until)
        assert done.index_version == r.index.current.version
        entry = done.entry
        assert (entry.seq, entry.action, entry.colour) == (
            1,
            risk_index_pb2.OVERRIDE_ACTION_SET,
            common_pb2.COLOUR_GREEN,
        )
        assert entry.masked_id_number == mask_id_number(PERSON) and entry.reason == REASON
        assert (entry.actor_role, entry.actor_principal) == (
            common_pb2.ACTOR_ROLE_SUPPORT,
            "desk-2",
        )
        assert len(entry.hash) == 64 and entry.prev_hash == "0" * 64
        held = r.index.current.version
    finally:
        r.close()
    # A restarted risk index: a new replica's stream (a snapshot), and a replica that holds the
    # version already (an empty delta), both start with the override.
    r = start(tmp_path)
    try:
        for known in (0, held):
            message, _ = _first_message(r, known)
            assert message.version == held
            wire = message.active_overrides
            assert wire.last_seq == 1
            [active] = [changes.override_from_proto(o, "test") for o in wire.overrides]
            assert active.colour == 0 and active.valid_until == until
            assert (active.reason, active.actor, active.seq) == (REASON, "support de***2", 1)
        listed = r.stub.ListOverrides(risk_index_pb2.ListOverridesRequest(actor=SUPPORT))
        assert listed.verified and listed.entry_count == 1
        assert listed.head_hash == entry.hash
        assert [e.seq for e in listed.entries] == [1]
        # Cleared: the next version carries the clear, the next stream starts without it.
        cleared = r.stub.ClearOverride(
            risk_index_pb2.ClearOverrideRequest(
                actor=SUPPORT,
                person=common_pb2.PersonRef(id_number=PERSON),
                reason="the appeal was withdrawn",
            )
        )
        assert cleared.index_version == held + 1
        assert cleared.entry.action == risk_index_pb2.OVERRIDE_ACTION_CLEAR
        resumed, _ = _first_message(r, held)
        assert [c.WhichOneof("change") for c in resumed.delta.changes] == ["colour_override"]
        assert not resumed.active_overrides.overrides and resumed.active_overrides.last_seq == 2
        later = r.stub.ListOverrides(
            risk_index_pb2.ListOverridesRequest(
                actor=SUPPORT, person=common_pb2.PersonRef(id_number=PERSON), page_size=1
            )
        )
        assert [e.seq for e in later.entries] == [2] and later.next_page_token == "2"
        assert later.verified and later.entry_count == 2
    finally:
        r.close()


def test_bad_overrides_are_refused_naming_each_field(running: Running) -> None:
    _register(running)
    before = running.index.accepted_version
    with pytest.raises(grpc.RpcError) as bad:
        running.stub.OverrideColour(
            risk_index_pb2.OverrideColourRequest(
                actor=SUPPORT,
                person=common_pb2.PersonRef(id_number=PERSON),
                reason=f"for {PERSON}",
            )
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {f for f, _ in field_violations(bad.value)} == {"colour", "reason", "valid_until"}
    far = risk_index_pb2.OverrideColourRequest(
        actor=SUPPORT,
        person=common_pb2.PersonRef(id_number=PERSON),
        colour=common_pb2.COLOUR_RED,
        reason=REASON,
    )
    far.valid_until.seconds = 2**62
    with pytest.raises(grpc.RpcError) as bad:
        running.stub.OverrideColour(far)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as denied:
        running.stub.OverrideColour(
            risk_index_pb2.OverrideColourRequest(
                actor=common_pb2.Actor(role=common_pb2.ACTOR_ROLE_VERIFIER, principal="gate-1"),
                person=common_pb2.PersonRef(id_number=PERSON),
            )
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as missing:
        running.stub.ClearOverride(
            risk_index_pb2.ClearOverrideRequest(
                actor=SUPPORT, person=common_pb2.PersonRef(id_number=PERSON), reason=REASON
            )
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert running.index.accepted_version == before


def test_a_whole_version_later_in_a_stream_carries_the_overrides_too(running: Running) -> None:
    """A replica too far behind for a delta is sent a whole version mid-stream: it replaces
    everything the replica held, so it carries the overrides in force as the first does."""
    _register(running)
    call = running.stub.WatchIndex(
        risk_index_pb2.WatchIndexRequest(known_version=running.index.current.version)
    )
    try:
        first = next(call)
        assert first.HasField("delta") and not first.active_overrides.overrides
        _override(running, dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
        delta = next(call)
        assert [c.WhichOneof("change") for c in delta.delta.changes] == ["colour_override"]
        assert not delta.HasField("active_overrides")
        # A version rebuilt from the database (no delta kept): every watcher gets a snapshot.
        current = running.index.current
        rebuilt = current.index.builder().finish(version=current.version + 1)
        running.index._publication.publish(
            Published(current.version + 1, dt.datetime.now(dt.UTC), rebuilt)
        )
        while True:
            message = next(call)
            assert not message.HasField("delta")
            if message.last_chunk:
                break
            assert not message.HasField("active_overrides")
        assert [o.seq for o in message.active_overrides.overrides] == [1]
    finally:
        call.cancel()


def test_a_whole_version_later_in_a_stream_carries_the_rule_set_too(running: Running) -> None:
    """The deltas a replica too far behind skipped may have carried a rule set: the whole
    version it gets instead names the rule set published last."""
    _register(running)
    text = (REPO / "services" / "rules" / "default.toml").read_text(encoding="utf-8")
    running.stub.PublishRuleSet(
        risk_index_pb2.PublishRuleSetRequest(actor=ADMIN, text=text, filename="default.toml")
    )
    call = running.stub.WatchIndex(
        risk_index_pb2.WatchIndexRequest(known_version=running.index.current.version)
    )
    try:
        first = next(call)
        assert first.rule_set.filename == "default.toml"  # the first message names it
        current = running.index.current
        rebuilt = current.index.builder().finish(version=current.version + 1)
        running.index._publication.publish(
            Published(current.version + 1, dt.datetime.now(dt.UTC), rebuilt)
        )
        while True:
            message = next(call)
            if message.last_chunk:
                break
            assert not message.HasField("rule_set")
        assert message.rule_set.filename == "default.toml" and message.rule_set.text == text
    finally:
        call.cancel()
