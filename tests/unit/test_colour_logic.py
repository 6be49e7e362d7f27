"""The colour engine without the network: verdicts follow index versions, rule sets and the
Asia/Shanghai hour (hourly windows) and day; an invalid rule set changes nothing; reasons say
which rule, source, day and phone."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import healthcode_matcher as hm
import pytest

from services._common.days import SHANGHAI, day_number, hour_number
from services._common.errors import InvalidArgument, Unavailable
from services._common.sources import SOURCES
from services.colour.engine import ColourEngine
from services.colour.model import PersonCard
from services.colour.rulestore import compile_rules
from services.rules import DEFAULT_RULE_SET_PATH, load_rule_set
from tests.support import SECRET, Clock

HASHER = hm.Hasher(SECRET)
IDS = hm.synthetic_id_numbers(4, 11).decode().split()
PHONES = hm.synthetic_phones(2, 11).decode().split()

NAT_CLEARS_CLOSE_CONTACT = """
version = "test-nat-clears"
[[rules]]
id = "close-contact"
colour = "red"
scope = "shared"
window_days = 14
checks = [{ source = "close_contact" }]
clears = [{ source = "nat_negative", window_hours = 48 }]
text_zh = "近14天内被判定为密切接触者。"
text_en = "A close contact within the last 14 days."
what_clears_zh = "48小时内核酸阴性。"
what_clears_en = "A verified negative test from the last 48 hours."

[[rules]]
id = "city-list"
colour = "yellow"
scope = "local"
checks = [{ source = "home_quarantine" }]
text_zh = "本市居家隔离名单。"
text_en = "On this city's home-quarantine list."
what_clears_zh = "移出名单。"
what_clears_en = "Removal from the list."
"""


def index_with(
    rows: dict[str, list[tuple[str, int | None]]], base: hm.Index | None = None
) -> hm.Index:
    """A new index version: every catalogue source, IDS registered, PHONES[0] held by IDS[1].
    Rows give a day number, or an hour number for an hourly source (nat_negative)."""
    builder = (base or hm.Index(SECRET)).builder()
    if base is None:
        for name, source in SOURCES.items():
            builder.define_source(name, source.keyed_by, source.has_county, hourly=source.hourly)
        for id_number in IDS:
            builder.add_person(id_number)
        builder.add_phone(PHONES[0], builder.add_person(IDS[1]))
    for name, entries in rows.items():
        ids, times = [e[0] for e in entries], [e[1] for e in entries]
        if SOURCES[name].hourly:
            builder.add_rows_by_identifier(name, ids, hours=times)
        else:
            builder.add_rows_by_identifier(name, ids, times)
    return builder.finish()


@pytest.fixture
def clock() -> Clock:
    return Clock(dt.datetime(2020, 12, 16, 10, 0, tzinfo=SHANGHAI))


@pytest.fixture
def engine(clock: Clock, tmp_path: Path) -> ColourEngine:
    rules = compile_rules(load_rule_set(DEFAULT_RULE_SET_PATH))
    return ColourEngine(
        SECRET,
        rules,
        now=clock,
        people=lambda key: PersonCard("", "", {HASHER.phone_key(PHONES[0]): "138****0000"}),
        rule_set_file=tmp_path / "colour" / "rule_set.toml",
    )


def today(clock: Clock) -> int:
    return day_number(clock())


def hour(clock: Clock) -> int:
    return hour_number(clock())


def test_no_index_means_unavailable_not_green(engine: ColourEngine) -> None:
    with pytest.raises(Unavailable):
        engine.evaluate(HASHER.person_key(IDS[0]))
    assert engine.status().index_version == 0


def test_a_close_contact_is_red_with_the_rule_source_and_day(
    engine: ColourEngine, clock: Clock
) -> None:
    engine.install_index(index_with({"close_contact": [(IDS[0], today(clock) - 2)]}))
    a = engine.evaluate(HASHER.person_key(IDS[0]))
    assert a.colour == hm.Colour.RED and a.registered
    fired = {r.rule_id: r for r in a.reasons}
    assert set(fired) == {"close-contact", "close-contact-monitoring"}
    reason = fired["close-contact"]
    assert reason.source == "close_contact"
    assert reason.day == dt.date(2020, 12, 14)
    assert "close contact" in reason.text_en and reason.text_zh
    assert a.index_version == 1 and a.rule_set_version == "2020.12.16-tianjin"
    assert a.day == dt.date(2020, 12, 16)
    remedies = {m.rule_id: m for m in a.remedies}
    assert remedies["close-contact"].clearing_sources == ("quarantine_released",)
    assert engine.evaluate(HASHER.person_key(IDS[3])).colour == hm.Colour.GREEN


def test_an_unknown_person_has_no_colour(engine: ColourEngine) -> None:
    engine.install_index(index_with({}))
    other = hm.synthetic_id_numbers(10, 99).decode().split()[-1]
    a = engine.evaluate(HASHER.person_key(other))
    assert not a.registered and a.colour is None and a.reasons == ()


def test_risk_through_a_linked_phone_names_the_masked_phone(
    engine: ColourEngine, clock: Clock
) -> None:
    base = index_with({})
    builder = base.builder()
    builder.set_county_level(210211, 3)
    builder.add_rows_by_identifier("telecom_roaming", [PHONES[0]], [today(clock)], [210211])
    engine.install_index(builder.finish())
    a = engine.evaluate(HASHER.person_key(IDS[1]))
    assert a.colour == hm.Colour.RED
    assert {r.masked_phone for r in a.reasons} == {"138****0000"}
    assert {r.county for r in a.reasons} == {210211}
    # R6: the high-risk roaming rule is local; other provinces see only the shared yellow.
    shared = engine.evaluate(HASHER.person_key(IDS[1]), shared_only=True)
    assert shared.colour == hm.Colour.YELLOW
    assert shared.rule_set_version.endswith("+shared")


def test_a_negative_test_clears_a_rule_that_it_may_clear(
    engine: ColourEngine, clock: Clock
) -> None:
    engine.set_rule_set(NAT_CLEARS_CLOSE_CONTACT, "t.toml", dry_run=False)
    engine.install_index(index_with({"close_contact": [(IDS[0], today(clock) - 1)]}))
    assert engine.evaluate(HASHER.person_key(IDS[0])).colour == hm.Colour.RED
    engine.install_index(
        index_with({"nat_negative": [(IDS[0], hour(clock))]}, base=engine_index(engine))
    )
    a = engine.evaluate(HASHER.person_key(IDS[0]))
    assert a.colour == hm.Colour.GREEN
    assert [(r.rule_id, r.cleared, r.cleared_by) for r in a.reasons] == [
        ("close-contact", True, "nat_negative")
    ]
    assert a.remedies == ()


def engine_index(engine: ColourEngine) -> hm.Index:
    matcher = engine._matcher
    assert matcher is not None
    return matcher.current.index


def test_midnight_rebuilds_the_verdicts_so_windows_move(engine: ColourEngine, clock: Clock) -> None:
    engine.install_index(index_with({"close_contact": [(IDS[0], today(clock) - 13)]}))
    assert engine.evaluate(HASHER.person_key(IDS[0])).colour == hm.Colour.RED
    assert not engine.tick()  # same day: nothing to do
    clock.advance(dt.timedelta(days=1))
    assert engine.tick()
    a = engine.evaluate(HASHER.person_key(IDS[0]))
    # Day 15 after the contact: the 14-day red lapsed, the 21-day monitoring still holds.
    assert a.colour == hm.Colour.YELLOW and a.day == dt.date(2020, 12, 17)


def test_every_new_hour_rebuilds_the_verdicts_so_hourly_windows_move(
    engine: ColourEngine, clock: Clock
) -> None:
    # 10:00: a close contact yesterday, a negative test 47 hours ago (inside "48 hours": this
    # hour and the 47 before it) and one 48 hours ago for another contact (just outside).
    engine.set_rule_set(NAT_CLEARS_CLOSE_CONTACT, "t.toml", dry_run=False)
    now = hour(clock)
    engine.install_index(
        index_with(
            {
                "close_contact": [(IDS[0], today(clock) - 1), (IDS[2], today(clock) - 1)],
                "nat_negative": [(IDS[0], now - 47), (IDS[2], now - 48)],
            }
        )
    )
    inside, outside = HASHER.person_key(IDS[0]), HASHER.person_key(IDS[2])
    a = engine.evaluate(inside)
    assert a.colour == hm.Colour.GREEN and a.hour == now
    assert engine.evaluate(outside).colour == hm.Colour.RED
    clock.advance(dt.timedelta(minutes=59))  # 10:59: the same hour, nothing to rebuild
    assert not engine.tick()
    assert engine.evaluate(inside).colour == hm.Colour.GREEN
    clock.advance(dt.timedelta(minutes=1))  # 11:00, the same day: the 47-hour test is 48 now
    assert engine.tick()
    a = engine.evaluate(inside)
    assert (a.colour, a.hour, a.day) == (hm.Colour.RED, now + 1, dt.date(2020, 12, 16))
    assert engine.status().hour == now + 1


def test_a_new_index_is_evaluated_at_the_current_hour(engine: ColourEngine, clock: Clock) -> None:
    engine.set_rule_set(NAT_CLEARS_CLOSE_CONTACT, "t.toml", dry_run=False)
    engine.install_index(index_with({"close_contact": [(IDS[0], today(clock))]}))
    # The replica's clock reached 11:00 before its tick ran; the next version still counts hours
    # up to 11:00, not the hour the previous verdicts were built at.
    clock.advance(dt.timedelta(hours=1))
    engine.install_index(
        index_with({"nat_negative": [(IDS[0], hour(clock))]}, base=engine_index(engine))
    )
    a = engine.evaluate(HASHER.person_key(IDS[0]))
    assert a.colour == hm.Colour.GREEN and a.hour == hour(clock)


def test_an_invalid_rule_set_is_refused_with_the_problem_and_the_old_one_stays(
    engine: ColourEngine,
) -> None:
    engine.install_index(index_with({}))
    broken = NAT_CLEARS_CLOSE_CONTACT.replace('source = "close_contact"', 'source = "gossip"')
    with pytest.raises(InvalidArgument) as refused:
        engine.set_rule_set(broken, "broken.toml", dry_run=False)
    assert any("gossip" in d for _, d in refused.value.violations)
    assert engine.status().rule_set_version == "2020.12.16-tianjin"
    with pytest.raises(InvalidArgument):
        engine.set_rule_set("version = ", "x.toml", dry_run=False)


def test_a_version_names_one_text(engine: ColourEngine) -> None:
    engine.set_rule_set(NAT_CLEARS_CLOSE_CONTACT, "a.toml", dry_run=False)
    # The same text again is fine (an operator retrying).
    engine.set_rule_set(NAT_CLEARS_CLOSE_CONTACT, "a.toml", dry_run=False)
    changed = NAT_CLEARS_CLOSE_CONTACT.replace('colour = "yellow"', 'colour = "red"')
    with pytest.raises(InvalidArgument) as refused:
        engine.set_rule_set(changed, "b.toml", dry_run=False)
    assert refused.value.violations[0][0] == "text: version"


def test_a_dry_run_reports_the_impact_and_activates_nothing(
    engine: ColourEngine, clock: Clock, tmp_path: Path
) -> None:
    engine.install_index(
        index_with(
            {
                "close_contact": [(IDS[0], today(clock))],
                "home_quarantine": [(IDS[2], None)],
            }
        )
    )
    outcome = engine.set_rule_set(NAT_CLEARS_CLOSE_CONTACT, "t.toml", dry_run=True)
    assert not outcome.activated
    assert outcome.previous_counts == (2, 0, 2)  # default rules: home quarantine is red
    assert outcome.counts == (2, 1, 1)
    assert engine.status().rule_set_version == "2020.12.16-tianjin"
    assert not (tmp_path / "colour" / "rule_set.toml").exists()
    activated = engine.set_rule_set(NAT_CLEARS_CLOSE_CONTACT, "t.toml", dry_run=False)
    assert activated.activated
    assert engine.status().counts == (2, 1, 1)
    assert (tmp_path / "colour" / "rule_set.toml").read_text() == NAT_CLEARS_CLOSE_CONTACT


def test_a_future_rule_set_waits_for_its_time(engine: ColourEngine, clock: Clock) -> None:
    engine.install_index(index_with({"home_quarantine": [(IDS[2], None)]}))
    future = "valid_from = 2020-12-17T00:00:00+08:00\n" + NAT_CLEARS_CLOSE_CONTACT
    outcome = engine.set_rule_set(future, "f.toml", dry_run=False)
    assert not outcome.activated
    assert engine.evaluate(HASHER.person_key(IDS[2])).colour == hm.Colour.RED
    clock.set(dt.datetime(2020, 12, 17, 0, 0, 1, tzinfo=SHANGHAI))
    assert engine.tick()
    assert engine.status().rule_set_version == "test-nat-clears"
    assert engine.evaluate(HASHER.person_key(IDS[2])).colour == hm.Colour.YELLOW


def test_a_resent_version_is_ignored(engine: ColourEngine) -> None:
    index = index_with({})
    assert engine.install_index(index)
    assert not engine.install_index(hm.Index.from_bytes(index.to_bytes(), SECRET))
