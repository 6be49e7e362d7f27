"""A bulk import's outbox messages as the risk index requests they become (serialized
protobuf, without the actor, which the outbox adds when it sends them).

An import chunk's messages hold tens of thousands of people or rows. Stored as JSON they cost
an encode when the chunk is stored, a decode when the outbox reads them, and a conversion of
every hex key back to bytes; stored as the request, the outbox only parses it (in C) and
sends it. The rows are half the size on disk too. The payload shapes are `logic`'s
(`_register_people_message`, `_residence_message`); small messages stay JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from healthcode.v1 import risk_index_pb2

from services.declaration.model import OutboxMessage

Request = risk_index_pb2.RegisterPeopleRequest | risk_index_pb2.IngestBatchRequest


def request(kind: str, payload: Mapping[str, Any]) -> Request:
    """A register_people or ingest_batch payload as its request; ValueError for another kind,
    KeyError for a payload without the fields."""
    if kind == "register_people":
        people = risk_index_pb2.RegisterPeopleRequest()
        # `add` fills the repeated fields in place: several times cheaper than building each
        # KeyedPerson and copying it into the list.
        add = people.people.add
        # An entry stored by an older version has no exchange hashes (`province enrol` then).
        for key, masked, phones, cards, *hashes in payload["people"]:
            person = add(person_key=bytes.fromhex(key), masked_id_number=masked)
            for phone_key, masked_phone in phones:
                person.phones.add(phone_key=bytes.fromhex(phone_key), masked_phone=masked_phone)
            for card_key, masked_card in cards:
                person.cards.add(card_key=bytes.fromhex(card_key), masked_card=masked_card)
            for province, hash_ in hashes[0] if hashes else ():
                person.exchange_hashes.add(province=province, hash=bytes.fromhex(hash_))
        return people
    if kind == "ingest_batch":
        batch = risk_index_pb2.IngestBatchRequest(
            source=payload["source"], batch_id=payload["batch_id"]
        )
        add_row = batch.rows.add
        for r in payload["rows"]:
            add_row(
                person_key=bytes.fromhex(r["person_key"]),
                masked=r["masked"],
                day=r["day"],
                county=int(r["county"]),
            )
        return batch
    raise ValueError(f"no request form for outbox message kind {kind!r}")


def request_bytes(message: OutboxMessage) -> bytes:
    """What the outbox table stores for a compact message."""
    return request(message.kind, message.payload).SerializeToString()


def request_from(kind: str, body: bytes) -> Request:
    """A stored body back as its request (the actor still unset)."""
    if kind == "register_people":
        return risk_index_pb2.RegisterPeopleRequest.FromString(body)
    if kind == "ingest_batch":
        return risk_index_pb2.IngestBatchRequest.FromString(body)
    raise ValueError(f"no request form for outbox message kind {kind!r}")
