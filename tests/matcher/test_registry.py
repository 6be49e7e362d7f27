"""The registry: dense ids at first sight, phone and card links, and never a false match at the
scale of a million persons."""

from __future__ import annotations

import random
from typing import Any

import healthcode_matcher as hm
import pytest
from matcher_support import SECRET, TODAY, from_u32, lines, u32
from pyroaring import BitMap

MILLION = 1_000_000
LISTED = 5_000


def test_a_million_persons_and_no_unlisted_person_matches() -> None:
    raw = hm.synthetic_id_numbers(MILLION, 2020)
    builder = hm.Index(SECRET).builder()
    ids = from_u32(builder.add_persons(raw))
    assert ids == list(range(MILLION))
    numbers = lines(raw)
    del raw
    rng = random.Random(1)
    listed = sorted(rng.sample(range(MILLION), LISTED))
    builder.define_source("confirmed", "person")
    builder.add_rows("confirmed", u32(listed[: LISTED // 2]), TODAY)
    # The other half arrives as a feed keyed by raw ID number, as a national list would.
    fed = builder.add_rows_by_identifier(
        "confirmed", [numbers[i] for i in listed[LISTED // 2 :]], [TODAY] * (LISTED - LISTED // 2)
    )
    assert fed == LISTED - LISTED // 2
    index = builder.finish()
    assert index.person_count == MILLION  # the feed found every person, registered none
    assert index.source_len("confirmed") == LISTED
    assert BitMap.deserialize(index.source_bitmap("confirmed", TODAY)) == BitMap(listed)

    plan = hm.Plan([{"id": "confirmed", "colour": "red", "checks": [{"source": "confirmed"}]}])
    verdicts = hm.Verdicts(index, plan, TODAY)
    assert verdicts.colour_counts() == (MILLION - LISTED, 0, LISTED)
    assert verdicts.rule_counts() == {"confirmed": LISTED}
    assert BitMap.deserialize(verdicts.non_green()) == BitMap(listed)
    colours, _ = verdicts.evaluate_many(u32(range(MILLION)))
    assert [i for i, colour in enumerate(colours) if colour] == listed

    # Raw numbers resolve to the same persons; unregistered ones (another population) to none.
    for i in rng.sample(range(MILLION), 2_000):
        assert index.person_id(numbers[i]) == i
    registered = set(numbers)
    strangers = [n for n in lines(hm.synthetic_id_numbers(20_000, 99)) if n not in registered]
    assert len(strangers) > 10_000
    for number in strangers:
        assert index.person_id(number) is None
        assert verdicts.evaluate_id_number(number) is None
    for i in listed[:200]:
        verdict = verdicts.evaluate_id_number(numbers[i])
        assert verdict is not None and verdict.person_id == i and verdict.colour == hm.Colour.RED


def test_first_sight_is_idempotent() -> None:
    numbers = lines(hm.synthetic_id_numbers(100, 5))
    builder = hm.Index(SECRET).builder()
    first = from_u32(builder.add_persons("\n".join(numbers).encode()))
    again = from_u32(builder.add_persons("\n".join(reversed(numbers)).encode()))
    assert again == list(reversed(first))
    assert builder.add_person(numbers[7].lower()) == first[7]
    assert builder.add_person(f"  {numbers[8]} ") == first[8]
    duplicated = from_u32(builder.add_persons("\n".join([numbers[0]] * 3).encode()))
    assert duplicated == [first[0]] * 3
    index = builder.finish()
    assert index.person_count == 100
    hasher = index.hasher()
    assert index.person_id_by_key(hasher.person_key(numbers[3])) == first[3]
    assert index.person_id_by_key(bytes(16)) is None
    # ... and back: every id names the key it was given, and no id past the registry does.
    assert [index.person_key(i) for i in first] == [hasher.person_key(n) for n in numbers]
    assert index.person_key(100) is None


def test_bulk_registration_is_all_or_nothing() -> None:
    numbers = lines(hm.synthetic_id_numbers(10, 6))
    bad = numbers[:4] + ["12010119800101123X"] + numbers[4:]
    builder = hm.Index(SECRET).builder()
    with pytest.raises(hm.InvalidIdNumber, match=r"\b5\b"):  # the bad line, 1-based
        builder.add_persons("\n".join(bad).encode())
    assert builder.finish().person_count == 0


def test_feed_rows_are_all_or_nothing() -> None:
    builder = hm.Index(SECRET).builder()
    builder.define_source("contact", "person")
    numbers = lines(hm.synthetic_id_numbers(3, 8))
    with pytest.raises(hm.IdentifierError, match=r"\b2\b"):  # the bad row, 0-based
        builder.add_rows_by_identifier("contact", [*numbers[:2], "nonsense"], [TODAY] * 3)
    index = builder.finish()
    assert index.person_count == 0
    assert index.source_len("contact") == 0


def test_phones_link_to_one_holder() -> None:
    builder = hm.Index(SECRET).builder()
    alice, bob = from_u32(builder.add_persons(hm.synthetic_id_numbers(2, 1)))
    phones = lines(hm.synthetic_phones(3, 1))
    ids = from_u32(builder.add_phones("\n".join(phones).encode(), u32([alice, alice, bob])))
    index = builder.finish()
    assert index.phone_count == 3
    assert sorted(index.phones_of(alice)) == sorted(ids[:2])
    assert index.phones_of(bob) == [ids[2]]
    assert [index.holder_of_phone(p) for p in ids] == [alice, alice, bob]
    assert index.phone_id("+86 " + phones[2]) == ids[2]

    # A phone moves to a new holder; another is unlinked; the old version is untouched.
    builder = index.builder()
    assert builder.add_phone(phones[1], bob) == ids[1]
    assert builder.unlink_phone(phones[0]) is True
    assert builder.unlink_phone(phones[0]) is False
    moved = builder.finish()
    assert moved.version == index.version + 1
    assert moved.phones_of(alice) == []
    assert sorted(moved.phones_of(bob)) == sorted(ids[1:])
    assert moved.holder_of_phone(ids[0]) is None
    assert sorted(index.phones_of(alice)) == sorted(ids[:2])


def test_transit_cards() -> None:
    builder = hm.Index(SECRET).builder()
    (elder,) = from_u32(builder.add_persons(hm.synthetic_id_numbers(1, 4)))
    builder.add_card("TJ-0001234", elder)
    index = builder.finish()
    assert index.card_count == 1
    assert index.card_holder(" TJ-0001234 ") == elder
    assert index.card_holder("TJ-9999999") is None


def test_unknown_things_are_invalid_operations() -> None:
    builder = hm.Index(SECRET).builder()
    builder.add_persons(hm.synthetic_id_numbers(2, 1))
    builder.define_source("confirmed", "person")
    with pytest.raises(hm.InvalidOperation):
        builder.add_rows("no-such-source", u32([0]), TODAY)
    with pytest.raises(hm.InvalidOperation):
        builder.add_rows("confirmed", u32([5]), TODAY)  # person 5 is not registered
    with pytest.raises(hm.InvalidOperation):
        builder.define_source("confirmed", "phone")  # redefined with other traits
    with pytest.raises(ValueError):
        builder.define_source("x", "email")
    index = builder.finish()
    with pytest.raises(hm.InvalidOperation):
        index.source_bitmap("no-such-source")
    plan = hm.Plan([{"id": "c", "colour": "red", "checks": [{"source": "confirmed"}]}])
    verdicts = hm.Verdicts(index, plan, TODAY)
    with pytest.raises(hm.InvalidOperation):
        verdicts.evaluate(2)
    with pytest.raises(hm.InvalidOperation):
        verdicts.colour(2)
    with pytest.raises(hm.InvalidOperation):
        verdicts.evaluate_many(u32([0, 1, 2]))
    with pytest.raises(ValueError):
        verdicts.evaluate_many(b"\x00\x00\x00")  # not a whole number of u32s


def test_plan_errors_name_the_rule() -> None:
    index = hm.Index(SECRET)
    bad_plans: list[list[dict[str, Any]]] = [
        [{"id": "bad-colour", "colour": "blue", "checks": [{"source": "x"}]}],
        [{"id": "bad-match", "colour": "red", "match": "most", "checks": [{"source": "x"}]}],
        [{"id": "no-checks", "colour": "red", "checks": []}],
        [{"id": "bad-days", "colour": "red", "checks": [{"source": "x", "days": -1}]}],
        [
            {"id": "twice", "colour": "red", "checks": [{"source": "x"}]},
            {"id": "twice", "colour": "red", "checks": [{"source": "y"}]},
        ],
    ]
    for rules in bad_plans:
        with pytest.raises(hm.PlanError, match=rules[0]["id"]):
            hm.Plan(rules)
    too_many = [{"id": f"r{i}", "colour": "red", "checks": [{"source": "x"}]} for i in range(65)]
    with pytest.raises(hm.PlanError):
        hm.Plan(too_many)
    sixty_four = hm.Plan(too_many[:64])
    assert len(sixty_four.rule_ids) == 64 and sixty_four.check_count == 64
    # A plan naming a source the index does not have is refused when it meets the index.
    with pytest.raises((hm.PlanError, hm.InvalidOperation)):
        hm.Verdicts(index, sixty_four, TODAY)
