"""A bulk import's outbox messages as the risk index requests they become (serialized
protobuf, without the actor, which the outbox adds when it sends them).

An import chunk's messages hold tens of thousands of people or rows. They are built as the
request from the keys as they are (`register_people_body`, `residence_body`) and stored
serialized: no JSON to encode and decode, no key to hex and back; the outbox only parses the
body (in C) and sends it. `request` reads the JSON form an older version stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from healthcode.v1 import risk_index_pb2

from services._common.exchange import ExchangeHashes

# A new person of an import chunk as the risk index hears of them: (masked ID, new phones, new
# cards, exchange hashes), each phone and card as (key, masked form).
RegisterEntry = tuple[str, list[tuple[bytes, str]], list[tuple[bytes, str]], ExchangeHashes]

Request = risk_index_pb2.RegisterPeopleRequest | risk_index_pb2.IngestBatchRequest


def request(kind: str, payload: Mapping[str, Any]) -> Request:
    """A register_people or ingest_batch payload stored as JSON (by an older version) as its
    request; ValueError for another kind, KeyError for a payload without the fields."""
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


def register_people_body(people: Iterable[tuple[bytes, RegisterEntry]]) -> bytes:
    """A chunk's new people and links, by person key, as a serialized RegisterPeopleRequest."""
    request = risk_index_pb2.RegisterPeopleRequest()
    add = request.people.add  # fills in place: several times cheaper than building each
    for key, (masked, phones, cards, hashes) in people:
        person = add(person_key=key, masked_id_number=masked)
        for phone_key, masked_phone in phones:
            person.phones.add(phone_key=phone_key, masked_phone=masked_phone)
        for card_key, masked_card in cards:
            person.cards.add(card_key=card_key, masked_card=masked_card)
        for province, hash_ in hashes:
            person.exchange_hashes.add(province=province, hash=hash_)
    return request.SerializeToString()


def residence_body(batch_id: str, residence: Iterable[tuple[bytes, tuple[str, int]]]) -> bytes:
    """A chunk's districts as a serialized IngestBatchRequest of the `residence` source:
    (person key, (masked ID, county)), undated."""
    batch = risk_index_pb2.IngestBatchRequest(source="residence", batch_id=batch_id)
    add_row = batch.rows.add
    for key, (masked, county) in residence:
        add_row(person_key=key, masked=masked, day="", county=county)
    return batch.SerializeToString()


def request_from(kind: str, body: bytes) -> Request:
    """A stored body back as its request (the actor still unset)."""
    if kind == "register_people":
        return risk_index_pb2.RegisterPeopleRequest.FromString(body)
    if kind == "ingest_batch":
        return risk_index_pb2.IngestBatchRequest.FromString(body)
    raise ValueError(f"no request form for outbox message kind {kind!r}")
