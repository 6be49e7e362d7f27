"""Manual colour overrides in one replica's engine (issue 10, item 4): an override in force
replaces the computed colour on every local answer (one person, Explain, the packed batches by
key and by ID number), with its reason first and the rules' colour underneath; it ends exactly
at `valid_until` (the answer's time decides, no timer), or when cleared; answers for other
provinces, counts and what-ifs stay the rules'."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import healthcode_matcher as hm
import pytest

from services._common import changes
from services._common.days import SHANGHAI, day_number
from services._common.sources import SOURCES
from services.colour.engine import INVALID_ENTRY, NOT_REGISTERED, ColourEngine
from services.colour.explanation import OVERRIDE_RULE_ID
from services.colour.follower import IndexFollower
from services.colour.model import PersonCard
from services.colour.rulestore import compile_rules
from services.rules import DEFAULT_RULE_SET_PATH, load_rule_set
from tests.support import SECRET, Clock

HASHER = hm.Hasher(SECRET)
IDS = hm.synthetic_id_numbers(5, 4242).decode().split()
RED, GREEN, STRANGER = IDS[0], IDS[1], IDS[4]
START = dt.datetime(2021, 3, 1, 9, 0, tzinfo=SHANGHAI)
UNTIL = START + dt.timedelta(hours=6)
# Wire colours of a batch: 1 green, 2 yellow, 3 red.
W_GREEN, W_YELLOW, W_RED = 1, 2, 3


def key(id_number: str) -> bytes:
    return HASHER.person_key(id_number)


def first_index() -> hm.Index:
    """Version 1: IDS[:4] registered, RED a confirmed case today."""
    builder = hm.Index(SECRET).builder()
    for name, source in SOURCES.items():
        builder.define_source(name, source.keyed_by, source.has_county, hourly=source.hourly)
    for id_number in IDS[:4]:
        builder.add_person(id_number)
    builder.add_rows_by_identifier("confirmed", [RED], [day_number(START.date())])
    return builder.finish(version=1)


def override(
    who: str, colour: int | None, seq: int, until: dt.datetime | None = UNTIL
) -> changes.Override:
    return changes.Override(
        key(who),
        colour,
        "appeal 2021-17: a negative test at the hospital",
        None if colour is None else until,
        START,
        "support de***2",
        seq,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def engine(clock: Clock, tmp_path: Path) -> ColourEngine:
    e = ColourEngine(
        SECRET,
        compile_rules(load_rule_set(DEFAULT_RULE_SET_PATH)),
        now=clock,
        people=lambda k: PersonCard("王*", "11**************1X", {}),
        rule_set_file=tmp_path / "rule_set.toml",
    )
    e.install_index(first_index())
    return e


def deliver(engine: ColourEngine, *delta: changes.Change) -> int:
    """The next index version with `delta`, as a replica applies it (through the wire)."""
    version = engine.index_version + 1
    wire = changes.to_proto(engine.index_version, delta)
    assert engine.apply_changes(changes.from_proto(wire), version)
    return version


def test_an_override_replaces_the_colour_and_says_why_first(engine: ColourEngine) -> None:
    assert engine.evaluate(key(RED)).colour == hm.Colour.RED
    deliver(engine, override(RED, int(hm.Colour.GREEN), 1))
    a = engine.evaluate(key(RED))
    assert a.colour == hm.Colour.GREEN
    assert a.manual is not None and a.manual.computed == hm.Colour.RED
    assert (a.manual.seq, a.manual.actor, a.manual.valid_until) == (1, "support de***2", UNTIL)
    first = a.reasons[0]
    assert first.rule_id == OVERRIDE_RULE_ID
    assert first.text_en == (
        "manual override by the support desk (support de***2) until 2021-03-01 15:00 CST: "
        "appeal 2021-17: a negative test at the hospital"
    )
    assert "有效至 2021-03-01 15:00" in first.text_zh
    # The rules' reasons follow: what holds once the override ends.
    assert [r.rule_id for r in a.reasons[1:]] == ["confirmed-case"]
    assert [m.rule_id for m in a.remedies] == ["confirmed-case"]
    # Other provinces see the rules' colour: an override is this city's decision.
    shared = engine.evaluate(key(RED), shared_only=True)
    assert shared.colour == hm.Colour.RED and shared.manual is None
    # Everyone else, and the counts, are the rules'.
    assert engine.evaluate(key(GREEN)).manual is None
    assert engine.status().counts == (3, 0, 1)
    # Shed reasons keep the overridden colour.
    shed = engine.evaluate(key(RED), reasons=False)
    assert shed.colour == hm.Colour.GREEN and shed.reasons_shed and not shed.reasons


def test_it_ends_exactly_at_valid_until(engine: ColourEngine, clock: Clock) -> None:
    deliver(engine, override(GREEN, int(hm.Colour.RED), 1))
    clock.set(UNTIL - dt.timedelta(microseconds=1))
    assert engine.evaluate(key(GREEN)).colour == hm.Colour.RED
    clock.set(UNTIL)
    ended = engine.evaluate(key(GREEN))
    assert ended.colour == hm.Colour.GREEN and ended.manual is None and not ended.reasons
    assert engine.colours(person_keys=key(GREEN)).colours == bytes([W_GREEN])
    # The hourly tick forgets it.
    engine.tick()
    assert engine.overrides() == ([], 1)


def test_a_clear_ends_it_and_older_changes_are_not_applied_twice(engine: ColourEngine) -> None:
    deliver(engine, override(RED, int(hm.Colour.GREEN), 1))
    deliver(engine, override(RED, None, 2))
    assert engine.evaluate(key(RED)).colour == hm.Colour.RED
    # A change the replica already reflects (a reconnect's delta after the first message's
    # list) is not applied again.
    engine.replace_overrides([override(GREEN, int(hm.Colour.YELLOW), 4)], 4)
    deliver(engine, override(RED, int(hm.Colour.GREEN), 3), override(GREEN, None, 4))
    assert engine.evaluate(key(RED)).colour == hm.Colour.RED
    assert engine.evaluate(key(GREEN)).colour == hm.Colour.YELLOW
    assert [o.seq for o in engine.overrides()[0]] == [4]
    # A later override replaces the person's earlier one.
    deliver(engine, override(GREEN, int(hm.Colour.RED), 5))
    assert engine.evaluate(key(GREEN)).colour == hm.Colour.RED


def test_an_unregistered_person_has_no_colour_even_with_an_override(
    engine: ColourEngine,
) -> None:
    deliver(engine, override(STRANGER, int(hm.Colour.GREEN), 1))
    a = engine.evaluate(key(STRANGER))
    assert a.colour is None and a.manual is None
    assert engine.colours(id_numbers=[STRANGER]).colours == bytes([NOT_REGISTERED])


def test_batches_by_key_and_by_id_number_apply_overrides(
    engine: ColourEngine, clock: Clock
) -> None:
    ids = [RED, GREEN, IDS[2], STRANGER, "not-a-number", RED]
    keys = b"".join(key(i) for i in ids[:4])
    plain = engine.colours(id_numbers=ids)
    assert plain.colours == bytes([W_RED, W_GREEN, W_GREEN, NOT_REGISTERED, INVALID_ENTRY, W_RED])
    deliver(
        engine,
        override(RED, int(hm.Colour.GREEN), 1),
        override(IDS[2], int(hm.Colour.YELLOW), 2),
        override(STRANGER, int(hm.Colour.GREEN), 3),
    )
    by_id = engine.colours(id_numbers=ids)
    assert by_id.colours == bytes(
        [W_GREEN, W_GREEN, W_YELLOW, NOT_REGISTERED, INVALID_ENTRY, W_GREEN]
    )
    assert [n for n, _ in by_id.problems] == [4]
    assert engine.colours(person_keys=keys).colours == by_id.colours[:4]
    # Other provinces' batches are the rules'.
    shared = engine.colours(person_keys=keys, shared_only=True)
    assert shared.colours[0] == W_RED
    # Every entry as one by one.
    for n, id_number in enumerate(ids[:4]):
        one = engine.evaluate(key(id_number)).colour
        assert by_id.colours[n] == (NOT_REGISTERED if one is None else int(one) + 1)
    clock.set(UNTIL)
    assert engine.colours(person_keys=keys).colours == plain.colours[:4]


def test_explain_shows_the_override_first_and_the_rules_underneath(
    engine: ColourEngine,
) -> None:
    deliver(engine, override(RED, int(hm.Colour.GREEN), 1))
    x = engine.explain(key(RED))
    assert x.assessment.colour == hm.Colour.GREEN
    assert x.assessment.manual is not None
    assert x.assessment.manual.computed == hm.Colour.RED
    assert x.assessment.reasons[0].rule_id == OVERRIDE_RULE_ID
    assert [(v.rule.id, v.cleared) for v in x.rules] == [("confirmed-case", False)]
    assert x.rules[0].evidence[0].source == "confirmed"
    # Explain for other provinces: the rules only.
    assert engine.explain(key(RED), shared_only=True).assessment.manual is None


def test_a_replica_keeps_its_overrides_beside_its_snapshot(
    engine: ColourEngine, clock: Clock, tmp_path: Path
) -> None:
    deliver(engine, override(RED, int(hm.Colour.GREEN), 1), override(GREEN, int(hm.Colour.RED), 2))
    deliver(engine, override(GREEN, None, 3))
    snapshot = tmp_path / "replica" / "index.snapshot"
    follower = IndexFollower(engine, "127.0.0.1:9", SECRET, snapshot_path=snapshot)
    try:
        assert follower.save_snapshot()
    finally:
        follower._channel.close()  # never started: nothing else to stop
    again = ColourEngine(SECRET, compile_rules(load_rule_set(DEFAULT_RULE_SET_PATH)), now=clock)
    resumed = IndexFollower(again, "127.0.0.1:9", SECRET, snapshot_path=snapshot)
    try:
        assert resumed.resume_from_snapshot()
    finally:
        resumed._channel.close()
    assert again.overrides() == engine.overrides()
    assert again.evaluate(key(RED)).colour == hm.Colour.GREEN
    assert again.evaluate(key(GREEN)).colour == hm.Colour.GREEN
