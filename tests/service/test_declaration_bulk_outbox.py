"""A bulk import's outbox messages are stored as the risk index requests they become
(serialized protobuf, schema v3), not as JSON with hex keys; messages stored as JSON by an
older version, before the upgrade, are still sent, in order with the new ones."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from healthcode.v1 import common_pb2, risk_index_pb2, risk_index_pb2_grpc

from services._common.actors import Role
from services._common.identifiers import Identifiers
from services._common.storage import SqliteRepository
from services.declaration.logic import plan_import, validate_import_row
from services.declaration.model import ImportInput, ImportState, PendingMessage
from services.declaration.outbox import OutboxWorker, is_bulk
from services.declaration.repository import SCHEMA_V1, SCHEMA_V2, DeclarationRepository
from services.declaration.wire import request, request_from
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
        PendingMessage(n, m.kind, m.payload, 0, m.body)
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


def json_form(kind: str, body: bytes) -> dict[str, Any]:
    """The JSON payload a version before stored bodies wrote for the same message."""
    parsed = request_from(kind, body)
    if isinstance(parsed, risk_index_pb2.RegisterPeopleRequest):
        return {
            "people": [
                [
                    p.person_key.hex(),
                    p.masked_id_number,
                    [[ph.phone_key.hex(), ph.masked_phone] for ph in p.phones],
                    [[c.card_key.hex(), c.masked_card] for c in p.cards],
                    [[h.province, h.hash.hex()] for h in p.exchange_hashes],
                ]
                for p in parsed.people
            ]
        }
    return {
        "source": parsed.source,
        "batch_id": parsed.batch_id,
        "rows": [
            {"person_key": r.person_key.hex(), "masked": r.masked, "day": r.day, "county": r.county}
            for r in parsed.rows
        ],
    }


def test_an_older_version_s_json_message_gives_the_stored_request() -> None:
    messages = planned(0, 1, 2)
    assert [m.kind for m in messages] == ["register_people", "ingest_batch"]
    for message in messages:
        assert message.body is not None and message.payload == {}
        stored = request_from(message.kind, message.body)
        if isinstance(stored, risk_index_pb2.RegisterPeopleRequest):
            assert len(stored.people) == 3
        else:
            assert len(stored.rows) == 3
        # An older message is sent the same way as a new one with the same content.
        text = json.loads(json.dumps(json_form(message.kind, message.body), ensure_ascii=False))
        assert request(message.kind, text) == stored


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
            [
                (m.kind, json.dumps(json_form(m.kind, m.body or b""), ensure_ascii=False))
                for m in old_messages
            ],
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
