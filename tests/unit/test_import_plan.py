"""The bulk import's domain: every row validated field by field, and `plan_import` deciding
per row against what is stored (no database, no network)."""

from __future__ import annotations

import healthcode_matcher
import pytest
from healthcode.v1 import risk_index_pb2

from services._common.actors import Role
from services._common.errors import InvalidArgument
from services._common.identifiers import Identifiers, mask_id_number, mask_phone
from services.declaration.logic import MAX_PHONES, plan_import, validate_import_row
from services.declaration.model import (
    ImportInput,
    ImportPerson,
    ImportState,
    KnownPerson,
    OutboxMessage,
)
from tests.support import SECRET

IDS = healthcode_matcher.synthetic_id_numbers(12, 515).decode().split()
PHONES = healthcode_matcher.synthetic_phones(24, 515).decode().split()
ids = Identifiers.from_secret(SECRET)
HEPING, BINHAI = 120101, 120116


def raw(i: int, **kw: object) -> ImportInput:
    fields: dict[str, object] = {
        "line": i + 2,
        "id_number": IDS[i],
        "name": f"张{i}",
        "phones": (PHONES[i],),
        "residence_county": HEPING,
        "registered_by": Role.CITIZEN,
    }
    fields.update(kw)
    return ImportInput(**fields)  # type: ignore[arg-type]


def valid(i: int, **kw: object) -> ImportPerson:
    return validate_import_row(ids, raw(i, **kw))


def empty() -> ImportState:
    return ImportState({}, {}, {})


def register_people(message: OutboxMessage) -> risk_index_pb2.RegisterPeopleRequest:
    assert message.kind == "register_people" and message.body is not None
    return risk_index_pb2.RegisterPeopleRequest.FromString(message.body)


def residence_rows(message: OutboxMessage) -> risk_index_pb2.IngestBatchRequest:
    assert message.kind == "ingest_batch" and message.body is not None
    return risk_index_pb2.IngestBatchRequest.FromString(message.body)


def fields_of(error: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [f for f, _ in error.value.violations]


def test_a_good_row_becomes_keys_and_masked_forms() -> None:
    p = valid(0, phones=(PHONES[0], PHONES[1], PHONES[0]), transit_card="tj0000000001")
    assert p.key == ids.person(IDS[0], "x").key
    assert p.masked_id_number == mask_id_number(IDS[0])
    assert [(i, m) for i, _, m in p.phones] == [
        (0, mask_phone(PHONES[0])),
        (1, mask_phone(PHONES[1])),
    ]  # the repeated number once
    assert p.card is not None and p.card[1] == "********0001"
    assert p.residence_county == HEPING
    assert (p.registered_by.role, p.registered_by.masked_id_number) == (
        Role.CITIZEN,
        p.masked_id_number,
    )
    assert not any(raw_number in repr(p) for raw_number in [*IDS, *PHONES])


def test_every_bad_field_of_a_row_is_named() -> None:
    bad_id = IDS[1][:-1] + ("0" if IDS[1][-1] != "0" else "1")
    with pytest.raises(InvalidArgument) as caught:
        validate_import_row(
            ids,
            raw(
                1,
                id_number=bad_id,
                name="",
                phones=(PHONES[1], "12345"),
                transit_card="卡",
                residence_county=99,
                registered_by=None,
            ),
        )
    assert fields_of(caught) == [
        "name",
        "id_number",
        "phones[1]",
        "transit_card",
        "residence_county",
        "registered_by",
    ]
    assert not any(bad_id in why for _, why in caught.value.violations)
    with pytest.raises(InvalidArgument) as caught:
        validate_import_row(ids, raw(1, phones=tuple(PHONES[: MAX_PHONES + 1])))
    assert fields_of(caught) == ["phones"]


def test_who_registered_the_person() -> None:
    grid = valid(2, registered_by=Role.GRID_WORKER, registrar_principal="grid-hp-007")
    assert (grid.registered_by.role, grid.registered_by.principal) == (
        Role.GRID_WORKER,
        "grid-hp-007",
    )
    family = valid(3, registered_by=Role.FAMILY_PROXY, registrar_id_number=IDS[4])
    assert family.registered_by.masked_id_number == mask_id_number(IDS[4])
    assert valid(3, registered_by=Role.FAMILY_PROXY).registered_by.masked_id_number == ""

    cases: list[tuple[dict[str, object], str]] = [
        ({"registered_by": Role.GRID_WORKER}, "registrar_principal"),
        (
            {"registered_by": Role.GRID_WORKER, "registrar_principal": PHONES[5]},
            "registrar_principal",
        ),
        ({"registered_by": Role.CITIZEN, "registrar_principal": "grid-1"}, "registrar_principal"),
        ({"registered_by": Role.CITIZEN, "registrar_id_number": IDS[4]}, "registrar_id_number"),
        (
            {"registered_by": Role.FAMILY_PROXY, "registrar_id_number": IDS[3]},
            "registrar_id_number",
        ),  # themself
        ({"registered_by": Role.ADMIN}, "registered_by"),
    ]
    for kw, field in cases:
        with pytest.raises(InvalidArgument) as caught:
            validate_import_row(ids, raw(3, **kw))
        assert fields_of(caught) == [field], kw


def test_a_new_chunk_is_new_people_with_one_message_each_kind() -> None:
    rows = [valid(0, transit_card="TJ01"), valid(1, residence_county=BINHAI), valid(2, phones=())]
    plan = plan_import(rows, empty())
    assert [p.key for p in plan.new_persons] == [r.key for r in rows]
    assert (plan.already_present, plan.updated, plan.rejected) == (0, 0, 0)
    assert len(plan.new_phones) == 2
    # A new person's card no one held: written with the person, not as an update after.
    assert plan.card_updates == []
    assert {p: m for p, (_, m) in plan.new_cards.items()} == {rows[0].key: "****"}
    kinds = [m.kind for m in plan.outbox]
    assert kinds == ["register_people", "ingest_batch"]
    people = register_people(plan.outbox[0]).people
    assert [p.person_key for p in people] == [r.key for r in rows]
    assert [len(p.phones) for p in people] == [1, 1, 0]
    assert [len(p.cards) for p in people] == [1, 0, 0]
    residence = residence_rows(plan.outbox[1])
    assert residence.source == "residence"
    assert [r.county for r in residence.rows] == [HEPING, BINHAI, HEPING]
    assert all(r.day == "" for r in residence.rows)
    assert all(m.payload == {} and m.body is not None for m in plan.outbox)
    stored = b"".join(m.body or b"" for m in plan.outbox)
    assert not any(raw_number.encode() in stored for raw_number in [*IDS, *PHONES])
    # The batch id is the rows' digest: the same rows, the same id (a resend is a replay).
    again = plan_import(rows, empty())
    assert residence_rows(again.outbox[1]).batch_id == residence.batch_id


def test_stored_people_are_present_and_gain_only_what_they_lacked() -> None:
    p0, p1, p2 = valid(0), valid(1), valid(2, transit_card="TJ02")
    phone0 = p0.phones[0][1]
    state = ImportState(
        {
            p0.key: KnownPerson("张0", None, HEPING, 1),
            p1.key: KnownPerson("张1", None, None, 1),
            p2.key: KnownPerson("张2", p2.card[0] if p2.card else None, HEPING, 1),
        },
        {phone0: p0.key, p1.phones[0][1]: p1.key, p2.phones[0][1]: p2.key},
        {p2.card[0]: p2.key} if p2.card else {},
    )
    more = valid(0, phones=(PHONES[0], PHONES[10]))
    plan = plan_import([more, p1, p2], state)
    assert (len(plan.new_persons), plan.already_present, plan.updated) == (0, 3, 2)
    assert [m for _, _, m in plan.new_phones] == [mask_phone(PHONES[10])]
    assert plan.residence_updates == [(p1.key, HEPING)]  # person 1 had no district
    people = register_people(plan.outbox[0]).people
    assert [p.person_key for p in people] == [p0.key]  # nothing new for the others' links
    assert [r.person_key for r in residence_rows(plan.outbox[1]).rows] == [p1.key]
    assert plan_import([p2], state).outbox == []  # a re-run of a stored row sends nothing


def test_a_row_that_conflicts_is_rejected_whole() -> None:
    p0, p1 = valid(0), valid(1)
    state = ImportState(
        {p0.key: KnownPerson("张0", None, HEPING, MAX_PHONES)},
        {p0.phones[0][1]: p0.key},
        {},
    )
    rows = [
        valid(0, name="李四", line=10),  # another name for a stored ID number
        valid(1, phones=(PHONES[1], PHONES[0]), line=11),  # person 0 holds PHONES[0]
        valid(0, phones=(PHONES[0], PHONES[11]), line=12),  # an eleventh phone
        valid(2, transit_card="TJ77", line=13),
        valid(3, transit_card="TJ77", line=14),  # line 13 took it just before
        valid(2, line=15),  # person 2 again: present now
    ]
    plan = plan_import(rows, state)
    assert [(line, f) for line, f, _ in plan.rejections] == [
        (10, "name"),
        (11, "phones[1]"),
        (12, "phones"),
        (14, "transit_card"),
    ]
    assert plan.rejected == 4 and plan.already_present == 1
    assert [p.line for p in plan.new_persons] == [13]
    assert p1.key not in {p.key for p in plan.new_persons}
    assert all(p1.phones[0][1] != k for k, _, _ in plan.new_phones)  # nothing of line 11


def test_a_card_given_up_earlier_in_the_chunk_is_free_for_the_next_holder() -> None:
    a = valid(0, transit_card="TJ000000000A")
    state = ImportState(
        {a.key: KnownPerson("张0", a.card[0] if a.card else None, HEPING, 1)},
        {a.phones[0][1]: a.key},
        {a.card[0]: a.key} if a.card else {},
    )
    switch = valid(0, transit_card="TJ000000000B")  # person 0 now holds card B
    takes_a = valid(1, transit_card="TJ000000000A")
    plan = plan_import([switch, takes_a], state)
    assert plan.rejected == 0
    assert [(p, m) for p, _, m in plan.card_updates] == [
        (a.key, "********000B"),
        (takes_a.key, "********000A"),
    ]


def test_a_card_passed_on_within_the_chunk_stays_updates_in_row_order() -> None:
    # New person 0 takes card C, then switches to card D (freeing C), and new person 1 takes
    # C: inserted with their rows, person 1's C would clash with person 0's before the switch.
    takes_c = valid(0, transit_card="TJ000000000C")
    switch = valid(0, transit_card="TJ000000000D")
    next_c = valid(1, transit_card="TJ000000000C")
    plain = valid(2, transit_card="TJ000000000E")
    plan = plan_import([takes_c, switch, next_c, plain], empty())
    assert plan.rejected == 0
    assert [(p, m) for p, _, m in plan.card_updates] == [
        (takes_c.key, "********000C"),
        (takes_c.key, "********000D"),
        (next_c.key, "********000C"),
    ]
    assert {p: m for p, (_, m) in plan.new_cards.items()} == {plain.key: "********000E"}
