"""Hospital triage grouping, the transit-card holders a display learns, and who may call which
partner RPC (issue 11, items 6 and 8)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import healthcode_matcher as hm
import pytest

from services._common.actors import Role
from services._common.auth import Caller
from services.display.partners import (
    NOT_GREEN,
    CardHolders,
    CardHolderUnknownHere,
    CardNotLinked,
    WrongPartner,
    partner_check,
    triage_group,
)
from services.display.store import LOOKUP, OK, DisplayEvent, DisplayLog

SECRET = b"\x05" * 32
GREEN, YELLOW, RED = 0, 1, 2


def test_a_green_patient_with_nothing_on_record_is_general() -> None:
    triaged = triage_group(GREEN, [])
    assert not triaged.key_group and triaged.category == ""


def test_a_code_that_is_not_green_makes_a_key_patient_with_its_category() -> None:
    assert triage_group(RED, ["close_contact"]).category == "close contact"
    assert triage_group(YELLOW, ["declared_travel"]).category == "travel from a risk area"
    # Reasons left out (an overloaded display) or a manual red: still key, by the colour.
    assert triage_group(RED, []) == triage_group(RED, ["an_unknown_source"])
    assert triage_group(RED, []).key_group and triage_group(RED, []).category == NOT_GREEN


def test_a_fever_or_history_on_record_makes_a_green_patient_key() -> None:
    # A close contact cleared by a negative test is green, but seen with protection.
    cleared = triage_group(GREEN, ["close_contact"])
    assert cleared.key_group and cleared.category == "close contact"
    assert triage_group(GREEN, ["declared_fever"]).category == "fever or symptoms"
    # The most serious category is the one named.
    assert triage_group(RED, ["declared_travel", "confirmed"]).category == (
        "confirmed or suspected case"
    )


def test_a_code_corrected_to_green_after_an_appeal_is_general() -> None:
    assert not triage_group(GREEN, ["telecom_roaming"], corrected_to_green=True).key_group
    # A correction to red stays key.
    assert triage_group(RED, ["telecom_roaming"], corrected_to_green=True).key_group


def _index(links: dict[bytes, bytes]) -> hm.Index:
    builder = hm.Index(SECRET).builder()
    for card, person in links.items():
        builder.add_card_key(card, builder.add_person_key(person))
    return builder.finish()


def test_a_cards_holder_is_read_from_the_replicas_index() -> None:
    card, person, other = b"c" * 16, b"p" * 16, b"q" * 16
    holders = CardHolders(lambda: _index({card: person, b"o" * 16: other}))
    assert holders.holder(card) == person
    assert holders.holder(b"o" * 16) == other
    with pytest.raises(CardNotLinked) as unknown:
        holders.holder(b"x" * 16)
    assert unknown.value.reason == "CARD_NOT_LINKED"
    assert "show" in unknown.value.message
    # The card relinked to someone else: the index's answer is the new holder.
    assert CardHolders(lambda: _index({card: other})).holder(card) == other


def test_without_a_replica_a_card_cannot_be_read() -> None:
    with pytest.raises(CardHolderUnknownHere):
        CardHolders(lambda: None).holder(b"c" * 16)


def test_only_the_right_kind_of_partner_or_verifier_may_call() -> None:
    partner_check(Caller(Role.PARTNER, "line8", context="bus_operator"), "bus_operator", "bus", "x")
    partner_check(Caller(Role.VERIFIER, "driver", context="bus"), "bus_operator", "bus", "x")
    partner_check(None, "hospital", "hospital", "x")  # a development run
    for caller in (
        Caller(Role.PARTNER, "nankai", context="hospital"),
        Caller(Role.VERIFIER, "gate-1", context="venue"),
    ):
        with pytest.raises(WrongPartner) as refused:
            partner_check(caller, "bus_operator", "bus", "BusScan")
        assert refused.value.reason == "WRONG_PARTNER"
        assert "BusScan is for bus_operator partners" in refused.value.message


def test_a_display_log_from_before_contexts_gets_their_columns(tmp_path: Path) -> None:
    path = tmp_path / "display.db"
    with sqlite3.connect(path) as old:  # the log's table as it was before issue 11
        old.execute(
            "CREATE TABLE display_events (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, "
            "outcome TEXT NOT NULL, at_ms INTEGER NOT NULL, day INTEGER NOT NULL, "
            "person_key BLOB, masked_id TEXT NOT NULL DEFAULT '', masked_name TEXT NOT NULL "
            "DEFAULT '', device TEXT NOT NULL, place TEXT NOT NULL, actor TEXT NOT NULL "
            "DEFAULT '', colour INTEGER, index_version INTEGER, rule_set_version TEXT, "
            "token_id BLOB)"
        )
        old.execute(
            "INSERT INTO display_events (kind, outcome, at_ms, day, device, place) "
            "VALUES ('show', 'OK', 1, 1, 'phone', '')"
        )
    old.close()
    log = DisplayLog(path)
    try:
        bus = DisplayEvent(
            LOOKUP, OK, 2_000, 18_612, b"k" * 16, "bus-7", "route 8", colour=0,
            context="bus", vehicle="津A·1", route="8",
        )  # fmt: skip
        recorded = log.record(bus)
    finally:
        log.close()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT id, context, vehicle, route FROM display_events").fetchall()
    db.close()
    assert rows == [(1, "", "", ""), (recorded.event_id, "bus", "津A·1", "8")]
