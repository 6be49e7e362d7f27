"""Explain (R16), WhatIf and feed freshness (issue 4, parts 6-8) on the colour engine and
through a real ColourService server on a loopback port (no other service: the index is
installed directly, the declaration service is a stand-in function)."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import grpc
import healthcode_matcher as hm
import pytest
from healthcode.v1 import colour_pb2, colour_pb2_grpc, common_pb2

from services._common.days import SHANGHAI, day_number, hour_number
from services._common.errors import InvalidArgument
from services._common.identifiers import Identifiers
from services._common.sources import SOURCES
from services._common.status import field_violations
from services.colour.engine import ColourEngine
from services.colour.freshness import depends_on
from services.colour.logic import ColourDesk
from services.colour.model import PersonCard
from services.colour.rulestore import compile_rules
from services.colour.servicer import SERVICE_NAME, ColourServicer
from services.colour.whatif import rule_differences
from services.rules import DEFAULT_RULE_SET_PATH, Window, load_rule_set
from tests.support import SECRET, Clock, StartServer

HASHER = hm.Hasher(SECRET)
IDS = hm.synthetic_id_numbers(6, 4242).decode().split()
PHONES = hm.synthetic_phones(3, 4242).decode().split()
MASKED = {HASHER.phone_key(PHONES[0]): "138****0001", HASHER.phone_key(PHONES[1]): "139****0002"}
DEFAULT_TEXT = DEFAULT_RULE_SET_PATH.read_text(encoding="utf-8")
DEFAULT = load_rule_set(DEFAULT_RULE_SET_PATH)
DALIAN_HIGH = 210211  # graded high below
BINHAI, HEPING = 120116, 120101


NOW = dt.datetime(2020, 12, 16, 10, 0, tzinfo=SHANGHAI)
TODAY = day_number(NOW)
HOUR = hour_number(NOW)  # 10:00


def people(key: bytes) -> PersonCard:
    """The declaration service's masked record; IDS[1] holds both phones (two SIMs)."""
    phones = MASKED if key == HASHER.person_key(IDS[1]) else {}
    return PersonCard("张*", "12**************3X", phones)


Rows = dict[str, list[tuple[str, int | None, int | None]]]


def build(rows: Rows, *, residence: bool = True, version: int = 1) -> hm.Index:
    """Every catalogue source, IDS registered, PHONES[0:2] held by IDS[1]; residence rows place
    IDS[0:3] in Binhai and IDS[3:] in Heping (unless `residence` is False). A row gives a day
    number, or an hour number for an hourly source (nat_negative)."""
    builder = hm.Index(SECRET).builder()
    for name, spec in SOURCES.items():
        if residence or not spec.attribute:
            builder.define_source(name, spec.keyed_by, spec.has_county, hourly=spec.hourly)
    for id_number in IDS:
        builder.add_person(id_number)
    holder = builder.add_person(IDS[1])
    builder.add_phone(PHONES[0], holder)
    builder.add_phone(PHONES[1], holder)
    builder.set_county_level(DALIAN_HIGH, 3)
    if residence:
        builder.add_rows_by_identifier(
            "residence", IDS, [None] * len(IDS), [BINHAI] * 3 + [HEPING] * (len(IDS) - 3)
        )
    for source, entries in rows.items():
        counties = [e[2] for e in entries] if SOURCES[source].has_county else None
        county_list = None if counties is None else [c or 0 for c in counties]
        ids, times = [e[0] for e in entries], [e[1] for e in entries]
        if SOURCES[source].hourly:
            builder.add_rows_by_identifier(source, ids, hours=times, counties=county_list)
        else:
            builder.add_rows_by_identifier(source, ids, times, county_list)
    return builder.finish(version=version)


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def engine(clock: Clock, tmp_path: Path) -> ColourEngine:
    return ColourEngine(
        SECRET,
        compile_rules(load_rule_set(DEFAULT_RULE_SET_PATH)),
        now=clock,
        people=people,
        rule_set_file=tmp_path / "colour" / "rule_set.toml",
    )


def key(n: int) -> bytes:
    return HASHER.person_key(IDS[n])


# --- Explain ---------------------------------------------------------------------------------


def test_two_sims_explain_names_the_second_phone_its_county_and_grading(
    engine: ColourEngine,
) -> None:
    engine.install_index(build({"telecom_roaming": [(PHONES[1], TODAY - 1, DALIAN_HIGH)]}))
    x = engine.explain(key(1))
    assert x.assessment.colour == hm.Colour.RED
    assert (x.masked_name, x.masked_id_number) == ("张*", "12**************3X")
    assert set(x.masked_phones) == {"138****0001", "139****0002"}
    rules = {v.rule.id: v for v in x.rules}
    assert set(rules) == {"high-risk-county-roaming", "medium-risk-county-roaming"}
    (row,) = rules["high-risk-county-roaming"].evidence
    assert (row.source, row.masked_phone, row.county, row.county_level) == (
        "telecom_roaming",
        "139****0002",
        DALIAN_HIGH,
        3,
    )
    assert row.day == dt.date(2020, 12, 15) and not row.phone_cleared_by
    assert not rules["high-risk-county-roaming"].cleared
    # Counting rules come first, in rule-set order; what clears them comes from the file.
    assert rules["high-risk-county-roaming"].rule.what_clears_en.startswith("If someone else")


def test_verifying_the_second_phone_clears_and_the_explanation_says_which_phone(
    engine: ColourEngine,
) -> None:
    engine.install_index(
        build(
            {
                "telecom_roaming": [(PHONES[1], TODAY - 1, DALIAN_HIGH)],
                "phone_community_verified": [(PHONES[1], TODAY, None)],
            }
        )
    )
    x = engine.explain(key(1))
    assert x.assessment.colour == hm.Colour.GREEN
    view = {v.rule.id: v for v in x.rules}["high-risk-county-roaming"]
    assert view.cleared
    (row,) = view.evidence
    assert (row.masked_phone, row.phone_cleared_by) == ("139****0002", "phone_community_verified")
    # Evaluate shows the same: the cleared rule, the phone, and what cleared it (R7).
    reasons = engine.evaluate(key(1)).reasons
    assert {(r.rule_id, r.masked_phone, r.cleared, r.cleared_by) for r in reasons} == {
        ("high-risk-county-roaming", "139****0002", True, "phone_community_verified"),
        ("medium-risk-county-roaming", "139****0002", True, "phone_community_verified"),
    }


def test_a_person_level_clear_is_listed_with_its_day_and_hour(engine: ColourEngine) -> None:
    engine.install_index(
        build(
            {
                "secondary_contact": [(IDS[0], TODAY - 3, None)],
                "nat_negative": [(IDS[0], HOUR - 20, None)],  # 2020-12-15 14:00
            }
        )
    )
    x = engine.explain(key(0))
    assert x.assessment.colour == hm.Colour.GREEN
    (view,) = x.rules
    assert view.rule.id == "secondary-contact" and view.cleared
    assert [(e.source, e.day) for e in view.evidence] == [
        ("secondary_contact", dt.date(2020, 12, 13))
    ]
    assert [(e.source, e.day, e.hour) for e in view.cleared_by] == [
        ("nat_negative", dt.date(2020, 12, 15), HOUR - 20)
    ]
    # A daily row has no hour.
    assert [e.hour for e in view.evidence] == [None]


def test_explain_gives_the_freshness_of_every_source_of_the_rule_set(
    engine: ColourEngine, clock: Clock
) -> None:
    engine.install_index(build({"close_contact": [(IDS[0], TODAY, None)]}))
    engine.set_feed_times(
        {
            "close_contact": NOW - dt.timedelta(hours=1),
            "confirmed": NOW - dt.timedelta(hours=25),  # limit 24 h
            "nat_negative": None,
        }
    )
    x = engine.explain(key(0))
    fresh = {f.source: f for f in x.sources}
    assert set(fresh) == DEFAULT.sources()
    assert "residence" not in fresh  # an attribute is no source of any rule
    assert not fresh["close_contact"].stale
    assert fresh["close_contact"].last_updated == NOW - dt.timedelta(hours=1)
    assert fresh["confirmed"].stale and fresh["confirmed"].max_staleness_hours == 24
    assert fresh["nat_negative"].stale and fresh["nat_negative"].last_updated is None
    assert fresh["quarantine_released"].stale  # not in the risk index's answer: never fed


def test_explain_of_an_unregistered_person_has_no_rules(engine: ColourEngine) -> None:
    engine.install_index(build({}))
    other = hm.synthetic_id_numbers(9, 77).decode().split()[-1]
    x = engine.explain(HASHER.person_key(other))
    assert not x.assessment.registered and x.rules == ()


# --- freshness -------------------------------------------------------------------------------


def test_before_the_risk_index_answers_every_raising_source_is_stale(
    engine: ColourEngine,
) -> None:
    engine.install_index(build({}))
    a = engine.evaluate(key(3))
    raising = {c.source for r in DEFAULT.rules for c in r.checks}
    assert set(a.stale_sources) == raising
    assert all(f.last_updated is None for f in a.stale_feeds)


def test_a_stalled_feed_turns_stale_by_the_clock_without_a_new_version(
    engine: ColourEngine, clock: Clock
) -> None:
    engine.install_index(build({}))
    engine.set_feed_times({name: NOW - dt.timedelta(hours=1) for name in SOURCES})
    assert engine.evaluate(key(3)).stale_sources == ()
    clock.set(NOW + dt.timedelta(hours=23, minutes=30))  # 24.5 h after the last batch
    a = engine.evaluate(key(3))
    assert "close_contact" in a.stale_sources  # 24 h limit
    assert "grassroots_screening" not in a.stale_sources  # 72 h limit
    (cc,) = [f for f in a.stale_feeds if f.source == "close_contact"]
    assert cc.last_updated == NOW - dt.timedelta(hours=1)


def test_a_green_verdict_does_not_depend_on_clearing_feeds_but_a_yellow_one_does(
    engine: ColourEngine,
) -> None:
    engine.install_index(build({"secondary_contact": [(IDS[0], TODAY, None)]}))
    engine.set_feed_times(
        {name: NOW for name in SOURCES if name not in ("nat_negative", "community_verified")}
    )
    green = engine.evaluate(key(3))
    assert green.colour == hm.Colour.GREEN and green.stale_sources == ()
    yellow = engine.evaluate(key(0))
    assert yellow.colour == hm.Colour.YELLOW
    # secondary-contact clears with a negative test (or release): a stalled lab feed may be
    # what keeps this person yellow.
    assert yellow.stale_sources == ("nat_negative",)
    assert depends_on(DEFAULT, ["secondary-contact"]) >= {"nat_negative", "quarantine_released"}


def test_shared_only_verdicts_depend_on_shared_rules_sources_only(engine: ColourEngine) -> None:
    engine.install_index(build({}))
    engine.set_feed_times({name: NOW for name in SOURCES if name != "home_quarantine"})
    assert "home_quarantine" in engine.evaluate(key(3)).stale_sources
    # home quarantine lists are Tianjin's own: what other provinces see does not rest on them.
    assert engine.evaluate(key(3), shared_only=True).stale_sources == ()


# --- WhatIf ----------------------------------------------------------------------------------


SECONDARY_RED = DEFAULT_TEXT.replace(
    'version = "2020.12.16-tianjin"', 'version = "2021.01.05-draft"'
).replace('id = "secondary-contact"\ncolour = "yellow"', 'id = "secondary-contact"\ncolour = "red"')


def test_what_if_counts_transitions_per_colour_rule_and_district(engine: ColourEngine) -> None:
    assert SECONDARY_RED != DEFAULT_TEXT and 'colour = "red"' in SECONDARY_RED
    # Binhai: IDS[0] and IDS[2]; Heping: IDS[4]. IDS[5] is cleared by a test.
    contacts: list[tuple[str, int | None, int | None]] = [
        (i, TODAY - 1, None) for i in (IDS[0], IDS[2], IDS[4])
    ]
    engine.install_index(
        build(
            {
                "secondary_contact": [*contacts, (IDS[5], TODAY, None)],
                "nat_negative": [(IDS[5], HOUR, None)],
                "close_contact": [(IDS[3], TODAY, None)],  # red either way
            }
        )
    )
    before = engine.status()
    w = engine.what_if(SECONDARY_RED, "draft.toml")
    assert (w.active_version, w.draft.version) == ("2020.12.16-tianjin", "2021.01.05-draft")
    assert w.person_count == len(IDS)
    assert w.colours == ((2, 0, 0), (0, 0, 3), (0, 0, 1))
    assert w.active_counts == (2, 3, 1) and w.draft_counts == (2, 0, 4) and w.changed == 3
    rules = {r.rule_id: r for r in w.rules}
    assert (rules["secondary-contact"].starts, rules["secondary-contact"].stops) == (0, 0)
    assert rules["secondary-contact"].differences == ("colour yellow -> red",)
    assert [r.rule_id for r in w.rules if r.differences] == ["secondary-contact"]
    assert all(r.in_active and r.in_draft for r in w.rules)
    assert w.district_source == "residence"
    assert w.districts == (
        (BINHAI, ((0, 0, 0), (0, 0, 2), (0, 0, 0))),
        (HEPING, ((0, 0, 0), (0, 0, 1), (0, 0, 0))),
    )
    assert w.changed_without_district == 0
    assert w.district_freshness is not None and w.district_freshness.stale  # never fed here
    # Nothing was activated: the same rule set, the same colours.
    after = engine.status()
    assert (after.rule_set_version, after.counts) == (before.rule_set_version, before.counts)
    assert engine.evaluate(key(0)).colour == hm.Colour.YELLOW


def test_what_if_per_rule_counts_a_rule_the_draft_drops(engine: ColourEngine) -> None:
    dropped = DEFAULT_TEXT.replace('id = "secondary-contact"', 'id = "secondary-contact-old"')
    dropped = dropped.replace('version = "2020.12.16-tianjin"', 'version = "renamed"')
    no_monitoring = _without_rule(DEFAULT_TEXT, "close-contact-monitoring").replace(
        'version = "2020.12.16-tianjin"', 'version = "no-monitoring"'
    )
    engine.install_index(build({"close_contact": [(IDS[0], TODAY - 16, None)]}))
    assert engine.evaluate(key(0)).colour == hm.Colour.YELLOW  # day 17 of 21: monitoring
    w = engine.what_if(no_monitoring, "draft.toml")
    rules = {r.rule_id: r for r in w.rules}
    assert (
        rules["close-contact-monitoring"].stops,
        rules["close-contact-monitoring"].in_draft,
    ) == (
        1,
        False,
    )
    assert w.colours[1][0] == 1
    assert rules["close-contact-monitoring"].differences == ("removed",)
    renamed = {r.rule_id: r for r in engine.what_if(dropped, "d.toml").rules}
    assert renamed["secondary-contact-old"].differences == ("added",)
    assert renamed["secondary-contact"].differences == ("removed",)
    assert (
        renamed["secondary-contact-old"].in_draft and not renamed["secondary-contact-old"].in_active
    )


def test_what_if_without_residence_rows_reports_no_districts(clock: Clock, tmp_path: Path) -> None:
    engine = ColourEngine(SECRET, compile_rules(DEFAULT), now=clock)
    engine.install_index(build({"secondary_contact": [(IDS[0], TODAY, None)]}, residence=False))
    w = engine.what_if(SECONDARY_RED, "draft.toml")
    assert w.district_source == "" and w.districts == () and w.changed_without_district == 1
    with pytest.raises(InvalidArgument) as refused:
        engine.what_if(SECONDARY_RED, "draft.toml", district_source="residence")
    assert refused.value.violations[0][0] == "district_source"


def test_what_if_refuses_a_district_source_that_is_not_an_attribute(engine: ColourEngine) -> None:
    engine.install_index(build({}))
    with pytest.raises(InvalidArgument) as refused:
        engine.what_if(SECONDARY_RED, "draft.toml", district_source="declared_travel")
    assert "attribute" in refused.value.violations[0][1]


def test_what_if_shared_only_compares_what_other_provinces_see(engine: ColourEngine) -> None:
    # Tianjin's home-quarantine list turned yellow instead of red: a local rule, so the status
    # other provinces see does not move at all.
    local_change = DEFAULT_TEXT.replace(
        'id = "home-quarantine"\ncolour = "red"', 'id = "home-quarantine"\ncolour = "yellow"'
    ).replace('version = "2020.12.16-tianjin"', 'version = "hq-yellow"')
    engine.install_index(build({"home_quarantine": [(IDS[0], None, None)]}))
    local = engine.what_if(local_change, "draft.toml")
    assert local.colours[2][1] == 1
    shared = engine.what_if(local_change, "draft.toml", shared_only=True)
    assert shared.changed == 0 and shared.draft.version == "hq-yellow+shared"
    assert shared.active_version == "2020.12.16-tianjin+shared"


def test_a_draft_that_checks_residence_is_refused_with_rule_and_field(
    engine: ColourEngine,
) -> None:
    engine.install_index(build({}))
    bad = DEFAULT_TEXT.replace(
        'checks = [{ source = "sealed_compound" }]',
        'checks = [{ source = "sealed_compound" }, { source = "residence" }]',
    )
    with pytest.raises(InvalidArgument) as refused:
        engine.what_if(bad, "draft.toml")
    fields = [f for f, _ in refused.value.violations]
    assert "text: rules[sealed-compound].checks[1].source" in fields


def _without_rule(text: str, rule_id: str) -> str:
    blocks = text.split("[[rules]]")
    kept = [b for b in blocks if f'id = "{rule_id}"\n' not in b]
    assert len(kept) == len(blocks) - 1
    return "[[rules]]".join(kept)


# --- through the servicer --------------------------------------------------------------------

SUPPORT = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_SUPPORT, principal="support-7")
ADMIN = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_ADMIN, principal="policy")


def citizen(n: int) -> common_pb2.Actor:
    return common_pb2.Actor(
        role=common_pb2.ACTOR_ROLE_CITIZEN, person=common_pb2.PersonRef(id_number=IDS[n])
    )


@pytest.fixture
def stub(engine: ColourEngine, start_server: StartServer) -> colour_pb2_grpc.ColourServiceStub:
    engine.install_index(
        build(
            {
                "telecom_roaming": [(PHONES[1], TODAY, DALIAN_HIGH)],
                "secondary_contact": [(IDS[0], TODAY, None)],
            }
        )
    )
    engine.set_feed_times({name: NOW for name in SOURCES if name != "telecom_roaming"})
    servicer = ColourServicer(ColourDesk(engine), Identifiers.from_secret(SECRET))
    served = start_server(
        lambda s: colour_pb2_grpc.add_ColourServiceServicer_to_server(servicer, s),
        [SERVICE_NAME],
    )
    return colour_pb2_grpc.ColourServiceStub(served.channel)


def test_explain_rpc_masks_everything_and_flags_the_stale_feed(
    stub: colour_pb2_grpc.ColourServiceStub,
) -> None:
    x = stub.Explain(
        colour_pb2.ExplainRequest(actor=SUPPORT, person=common_pb2.PersonRef(id_number=IDS[1])),
        timeout=5,
    )
    assert x.verdict.colour == common_pb2.COLOUR_RED
    assert x.masked_id_number == IDS[1][:2] + "*" * 14 + IDS[1][-2:]
    text = str(x)
    assert IDS[1] not in text and PHONES[1] not in text and PHONES[0] not in text
    high = next(r for r in x.rules if r.rule_id == "high-risk-county-roaming")
    assert high.outcome == colour_pb2.RULE_OUTCOME_FIRED and high.colour == common_pb2.COLOUR_RED
    assert high.scope == "local" and high.window == "14 days"
    (row,) = high.evidence
    assert (row.masked_phone, row.county, row.county_level) == (
        "139****0002",
        DALIAN_HIGH,
        common_pb2.COUNTY_RISK_LEVEL_HIGH,
    )
    assert row.source_title_zh == "电信漫游"
    assert list(high.clearing_sources) == [
        "phone_community_verified",
        "community_verified",
        "nat_negative",
    ]
    # The verdict depends on the stalled telecom feed and says so, with its (absent) time.
    assert x.verdict.stale and list(x.verdict.stale_sources) == ["telecom_roaming"]
    (feed,) = x.verdict.stale_feeds
    assert feed.source == "telecom_roaming" and not feed.HasField("last_updated")
    listed = {f.source: f for f in x.sources}
    assert listed["telecom_roaming"].stale and not listed["close_contact"].stale
    assert listed["close_contact"].last_updated.ToDatetime(dt.UTC) == NOW.astimezone(dt.UTC)


def test_explain_rpc_gives_the_hour_of_a_negative_test_and_of_the_verdict(
    engine: ColourEngine, stub: colour_pb2_grpc.ColourServiceStub
) -> None:
    engine.install_index(
        build(
            {
                "secondary_contact": [(IDS[2], TODAY - 1, None)],
                "nat_negative": [(IDS[2], HOUR - 20, None)],
            },
            version=2,  # after the stub's version 1
        )
    )
    x = stub.Explain(
        colour_pb2.ExplainRequest(actor=SUPPORT, person=common_pb2.PersonRef(id_number=IDS[2])),
        timeout=5,
    )
    assert x.verdict.colour == common_pb2.COLOUR_GREEN
    assert (x.verdict.day, x.verdict.hour) == ("2020-12-16", "2020-12-16 10:00")
    (rule,) = x.rules
    assert rule.outcome == colour_pb2.RULE_OUTCOME_CLEARED
    assert [(e.source, e.day, e.hour) for e in rule.cleared_by] == [
        ("nat_negative", "2020-12-15", "2020-12-15 14:00")
    ]
    assert [(e.source, e.hour) for e in rule.evidence] == [("secondary_contact", "")]
    status = stub.GetStatus(colour_pb2.GetStatusRequest(), timeout=5)
    assert (status.day, status.hour) == ("2020-12-16", "2020-12-16 10:00")


def test_evaluate_rpc_carries_the_stale_flag_for_verifiers(
    stub: colour_pb2_grpc.ColourServiceStub,
) -> None:
    v = stub.Evaluate(
        colour_pb2.EvaluateRequest(actor=SUPPORT, person=common_pb2.PersonRef(id_number=IDS[3])),
        timeout=5,
    ).verdict
    assert v.colour == common_pb2.COLOUR_GREEN
    assert v.stale and [f.source for f in v.stale_feeds] == ["telecom_roaming"]


def test_a_citizen_may_explain_only_themself_and_a_partner_not_at_all(
    stub: colour_pb2_grpc.ColourServiceStub,
) -> None:
    mine = stub.Explain(
        colour_pb2.ExplainRequest(actor=citizen(0), person=common_pb2.PersonRef(id_number=IDS[0])),
        timeout=5,
    )
    assert [r.rule_id for r in mine.rules] == ["secondary-contact"]
    with pytest.raises(grpc.RpcError) as other:
        stub.Explain(
            colour_pb2.ExplainRequest(
                actor=citizen(0), person=common_pb2.PersonRef(id_number=IDS[1])
            ),
            timeout=5,
        )
    assert other.value.code() == grpc.StatusCode.PERMISSION_DENIED
    partner = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_PARTNER, principal="hospital")
    with pytest.raises(grpc.RpcError) as refused:
        stub.Explain(
            colour_pb2.ExplainRequest(actor=partner, person=common_pb2.PersonRef(id_number=IDS[0])),
            timeout=5,
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_what_if_rpc_is_for_admins_and_reports_the_matrix(
    stub: colour_pb2_grpc.ColourServiceStub,
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        stub.WhatIf(colour_pb2.WhatIfRequest(actor=SUPPORT, text=SECONDARY_RED), timeout=5)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    w = stub.WhatIf(colour_pb2.WhatIfRequest(actor=ADMIN, text=SECONDARY_RED), timeout=30)
    assert (w.active_version, w.draft_version, w.changed) == (
        "2020.12.16-tianjin",
        "2021.01.05-draft",
        1,
    )
    cells = {(t.from_colour, t.to_colour): t.persons for t in w.transitions}
    assert len(cells) == 9 and cells[(common_pb2.COLOUR_YELLOW, common_pb2.COLOUR_RED)] == 1
    assert (w.active_counts.yellow, w.draft_counts.yellow) == (1, 0)
    (binhai,) = w.districts
    assert binhai.county == BINHAI and binhai.changed == 1
    assert [(t.from_colour, t.to_colour, t.persons) for t in binhai.transitions] == [
        (common_pb2.COLOUR_YELLOW, common_pb2.COLOUR_RED, 1)
    ]
    assert w.district_freshness.source == "residence"
    assert w.draft_check_count == DEFAULT.check_count
    status = stub.GetStatus(colour_pb2.GetStatusRequest(), timeout=5)
    assert status.rule_set_version == "2020.12.16-tianjin"


def test_what_if_rpc_names_the_rule_and_field_of_a_bad_draft(
    stub: colour_pb2_grpc.ColourServiceStub,
) -> None:
    bad = SECONDARY_RED.replace("window_days = 28", "window_days = 0", 1)
    with pytest.raises(grpc.RpcError) as refused:
        stub.WhatIf(colour_pb2.WhatIfRequest(actor=ADMIN, text=bad, filename="jan.toml"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = [f for f, _ in field_violations(refused.value)]
    assert "text: rules[confirmed-case].window_days" in fields


def test_rule_differences_name_what_the_draft_changes() -> None:
    rule = DEFAULT.rule("high-risk-county-travel")
    wider = replace(
        rule,
        window=Window(21, "days"),
        checks=tuple(replace(c, window=Window(21, "days")) for c in rule.checks),
        scope="shared",
    )
    assert rule_differences(rule, wider) == (
        "scope local -> shared",
        "window 14 days -> 21 days",
        "checks declared_travel 14 days level>=3 -> declared_travel 21 days level>=3",
    )
    assert rule_differences(rule, rule) == ()
