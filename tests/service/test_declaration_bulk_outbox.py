"""A bulk import's outbox messages are stored as the risk index requests they become
(serialized protobuf, schema v3), not as JSON with hex keys; messages stored as JSON by an
older version, before the upgrade, are still sent, in order with the new ones."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from healthcode.v1 import common_pb2, risk_index_pb2, risk_index_pb2_grpc

from services._common.actors import Role
from services._common.identifiers import Identifiers
from services._common.storage import SqliteRepository
from services.declaration.logic import plan_import, validate_import_row
from services.declaration.model import ImportInput, ImportState, PendingMessage
from services.declaration.outbox import OutboxWorker, is_bulk
from services.declaration.repository import SCHEMA_V1, SCHEMA_V2, DeclarationRepository
from services.declaration.wire import request, request_bytes, request_from
from services.risk_index.servicer import SERVICE_NAME as RISK_INDEX_SERVICE
from tests.service.test_declaration_import import (
    HEPING,
    IDS,
    PHONES,
    Declaration,
    StandIn,
    row,
    start_declaration,
    stream,
)
from tests.support import SECRET, Served, StartServer, wait_until

ids = Identifiers.from_secret(SECRET)


@pytest.fixture
def stand_in(start_server: StartServer) -> tuple[StandIn, Served]:
    fake = StandIn()  # type: ignore[abstract]  # only what the outbox calls
    served = start_server(
        lambda s: risk_index_pb2_grpc.add_RiskIndexServiceServicer_to_server(fake, s),
        [RISK_INDEX_SERVICE],
    )
    return fake, served


@pytest.fixture
def decl(
    tmp_path: Path, stand_in: tuple[StandIn, Served], start_server: StartServer
) -> Iterator[Declaration]:
    yield from start_declaration(tmp_path, stand_in[1].address, start_server)


def planned(*people: int) -> list[PendingMessage]:
    """plan_import's messages for new people, as the outbox would read them."""
    rows = [
        validate_import_row(
            ids,
            ImportInput(
                i + 2,
                IDS[i],
                f"张{i}",
                (PHONES[i],),
                transit_card="TJ0000000001" if i == 0 else "",
                residence_county=HEPING,
                registered_by=Role.CITIZEN,
            ),
        )
        for i in people
    ]
    return [
        PendingMessage(n, m.kind, m.payload, 0, request_bytes(m) if m.compact else None)
        for n, m in enumerate(plan_import(rows, ImportState({}, {}, {})).outbox)
    ]


def test_an_import_chunk_is_stored_as_its_requests(
    decl: Declaration, stand_in: tuple[StandIn, Served]
) -> None:
    decl.outbox.stop()  # the messages wait in the table
    reply = decl.stub.ImportPeople(stream([row(0), row(1, phones=[PHONES[1], PHONES[21]])]))
    assert reply.imported == 2
    stored = decl.repo.pending()
    assert [(m.kind, dict(m.payload)) for m in stored] == [
        ("register_people", {}),
        ("ingest_batch", {}),
    ]
    assert all(m.body is not None and is_bulk(m) for m in stored)
    assert stored[0].body is not None and stored[1].body is not None
    people = risk_index_pb2.RegisterPeopleRequest.FromString(stored[0].body).people
    assert [len(p.phones) for p in people] == [1, 2]
    assert not any(raw.encode() in m.body for m in stored if m.body for raw in [*IDS, *PHONES])
    batch = risk_index_pb2.IngestBatchRequest.FromString(stored[1].body)
    assert batch.source == "residence" and [r.county for r in batch.rows] == [HEPING, HEPING]


def test_the_stored_request_is_the_json_payload_s_request() -> None:
    for message in planned(0, 1, 2):
        assert message.body is not None
        assert request_from(message.kind, message.body) == request(message.kind, message.payload)
        # the same request the JSON form gives, so an older message is sent the same way
        text = json.loads(json.dumps(dict(message.payload), ensure_ascii=False))
        assert request(message.kind, text) == request_from(message.kind, message.body)


def test_a_corrupt_body_is_set_aside_not_retried_for_ever(
    tmp_path: Path, stand_in: tuple[StandIn, Served]
) -> None:
    fake, served = stand_in
    repo = DeclarationRepository(tmp_path / "declaration.sqlite3")
    with repo.transaction() as conn:
        conn.execute(
            "INSERT INTO outbox (kind, payload, body, created_at) VALUES (?, '', ?, '')",
            ("register_people", b"\xff\xff\xff"),
        )
    worker = OutboxWorker(repo, risk_index_pb2_grpc.RiskIndexServiceStub(served.channel))
    assert worker.drain()
    assert repo.pending_count() == 0 and fake.people_calls == []
    repo.close()


class VersionTwo(SqliteRepository):
    """The declaration database as the version before compact messages left it."""

    MIGRATIONS = (SCHEMA_V1, SCHEMA_V2)


@pytest.mark.parametrize("first", ["register_people", "ingest_batch"])
def test_json_messages_from_before_the_upgrade_are_still_sent_in_order(
    tmp_path: Path, stand_in: tuple[StandIn, Served], first: str
) -> None:
    path = tmp_path / "declaration.sqlite3"
    old = VersionTwo(path)
    old_messages = [m for m in planned(0, 1) if m.kind == first]
    with old.transaction() as conn:  # as the older version stored them: JSON, hex keys
        conn.executemany(
            "INSERT INTO outbox (kind, payload, created_at) VALUES (?, ?, '')",
            [(m.kind, json.dumps(dict(m.payload), ensure_ascii=False)) for m in old_messages],
        )
    assert old.schema_version == 2
    old.close()

    repo = DeclarationRepository(path)  # the upgrade: schema v3 on, the JSON rows untouched
    assert repo.schema_version == len(repo.MIGRATIONS) >= 3
    new_messages = planned(2, 3)
    with repo.transaction() as conn:
        conn.executemany(
            "INSERT INTO outbox (kind, payload, body, created_at) VALUES (?, '', ?, '')",
            [(m.kind, m.body) for m in new_messages],
        )
    pending = repo.pending()
    assert [m.body is None for m in pending] == [True, False, False]
    assert is_bulk(pending[0]) == (first == "register_people")  # as before: by its size

    fake, served = stand_in
    worker = OutboxWorker(repo, risk_index_pb2_grpc.RiskIndexServiceStub(served.channel))
    worker.start()
    wait_until("the outbox is drained", lambda: repo.pending_count() == 0)
    worker.stop()
    repo.close()
    assert worker.delivered == len(old_messages) + 2

    old_keys = [ids.person(IDS[i], "x").key for i in (0, 1)]
    new_keys = [ids.person(IDS[i], "x").key for i in (2, 3)]
    if first == "register_people":  # the old chunk first, then the new one
        assert [[p.person_key for p in call] for call in fake.people_calls] == [
            old_keys,
            new_keys,
        ]
        assert fake.people_calls[0][0].cards[0].masked_card == "********0001"
        assert [len(b.rows) for b in fake.batches] == [2]
    else:
        assert [[r.person_key for r in b.rows] for b in fake.batches] == [old_keys, new_keys]
        assert [b.actor.role for b in fake.batches] == [common_pb2.ACTOR_ROLE_SERVICE] * 2
