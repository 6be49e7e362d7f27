"""Under overload a display sheds a Show's reasons before its colour (issue 9): the answer
says so, and the colour, versions and stale feeds are whole."""

from __future__ import annotations

from pathlib import Path

from healthcode.v1 import common_pb2

from services.colour.engine import ColourEngine
from services.colour.rulestore import compile_rules
from services.display.peers import ReplicaColour
from services.risk_index.model import RawRow
from services.rules import DEFAULT_RULE_SET_PATH, load_rule_set
from tests.support import SECRET
from tests.unit.test_risk_index_versions import (
    FEED,
    HASHER,
    IDS,
    NOW,
    SERVICE,
    TODAY,
    open_index,
    person,
)


def test_an_overloaded_display_answers_the_colour_without_the_reasons(tmp_path: Path) -> None:
    ri = open_index(tmp_path)
    try:
        ri.register_people(SERVICE, [person(0), person(1)])
        ri.ingest_batch(FEED, "close_contact", "cdc-1", [RawRow("id_number", IDS[0], day=TODAY)])
        ri.flush()
        engine = ColourEngine(
            SECRET, compile_rules(load_rule_set(DEFAULT_RULE_SET_PATH)), now=lambda: NOW
        )
        engine.install_index(ri.current.index)
    finally:
        ri.close()
    contact, other = HASHER.person_key(IDS[0]), HASHER.person_key(IDS[1])
    busy = False
    colours = ReplicaColour(engine, busy=lambda: busy)

    whole = colours.live_colour(contact).detail
    assert whole.colour == common_pb2.COLOUR_RED and whole.reasons and whole.remedies
    assert not whole.reasons_shed

    busy = True
    shed = colours.live_colour(contact).detail
    assert shed.reasons_shed and not shed.reasons and not shed.remedies
    # Everything else is the same answer.
    for field in ("colour", "index_version", "rule_set_version", "day", "hour", "stale"):
        assert getattr(shed, field) == getattr(whole, field), field
    assert list(shed.stale_sources) == list(whole.stale_sources)
    # Nothing fired for a green person: nothing was shed.
    green = colours.live_colour(other).detail
    assert green.colour == common_pb2.COLOUR_GREEN and not green.reasons_shed
