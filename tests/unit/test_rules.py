"""The rule-set file format and the default rule set (R5, R6): loading, validation errors that
name file, rule and field, and the shared-only view other provinces receive."""

from __future__ import annotations

import copy
import dataclasses
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services._common.sources import SOURCES
from services.rules import (
    DEFAULT_RULE_SET_PATH,
    MAX_CHECKS_PER_DISPLAY,
    RuleSet,
    RuleSetError,
    Window,
    load_rule_set,
    parse_rule_set,
    select_active,
)
from services.rules.reference import Feed, evaluate

CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def default() -> RuleSet:
    return load_rule_set(DEFAULT_RULE_SET_PATH)


# --- a tiny TOML writer, so each test states its rule set as data ----------------------------


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(v)


def to_toml(doc: dict[str, Any]) -> str:
    lines = [f"{k} = {_value(v)}" for k, v in doc.items() if k != "rules"]
    for rule in doc.get("rules", []):
        lines.append("\n[[rules]]")
        lines += [f"{k} = {_value(v)}" for k, v in rule.items()]
    return "\n".join(lines) + "\n"


BASE_RULE: dict[str, Any] = {
    "id": "close-contact",
    "colour": "red",
    "scope": "shared",
    "window_days": 14,
    "text_zh": "近14天内被判定为密切接触者。",
    "text_en": "Identified as a close contact within the last 14 days.",
    "what_clears_zh": "解除隔离后转绿。",
    "what_clears_en": "Turns green on release from quarantine.",
    "checks": [{"source": "close_contact"}],
    "clears": [{"source": "quarantine_released", "window_days": 14}],
}


def one_rule(**changes: Any) -> dict[str, Any]:
    rule = copy.deepcopy(BASE_RULE)
    for k, v in changes.items():
        if v is None:
            rule.pop(k, None)
        else:
            rule[k] = v
    return {"version": "test-1", "rules": [rule]}


# --- the default rule set ----------------------------------------------------------------------


def test_default_rule_set_loads(default: RuleSet) -> None:
    assert default.version
    assert default.valid_from is not None and default.valid_from.tzinfo is not None
    assert 1 <= len(default.rules) <= 64
    assert default.filename == str(DEFAULT_RULE_SET_PATH)


def test_default_runs_between_30_and_42_checks_per_display(default: RuleSet) -> None:
    assert 30 <= default.check_count <= MAX_CHECKS_PER_DISPLAY


def test_every_risk_raising_source_is_checked_by_some_rule(default: RuleSet) -> None:
    raising = {n for n, s in SOURCES.items() if s.raising}
    checked = {c.source for r in default.rules for c in r.checks}
    assert raising - checked == set()


def test_every_clearing_source_clears_some_rule(default: RuleSet) -> None:
    clearing = {n for n, s in SOURCES.items() if s.clearing}
    used = {c.source for r in default.rules for c in r.clears}
    assert clearing - used == set()


@pytest.mark.parametrize(
    ("topic", "source", "min_level"),
    [
        ("confirmed case", "confirmed", None),
        ("suspected case", "suspected", None),
        ("close contact", "close_contact", None),
        ("secondary contact", "secondary_contact", None),
        ("high-risk county, declared travel", "declared_travel", 3),
        ("medium-risk county, declared travel", "declared_travel", 2),
        ("high-risk county, roaming of a linked phone", "telecom_roaming", 3),
        ("medium-risk county, roaming of a linked phone", "telecom_roaming", 2),
        ("inbound traveller", "inbound_traveller", None),
        ("co-traveller of an inbound case", "inbound_co_traveller", None),
        ("another province's red", "province_red", None),
        ("another province's yellow", "province_yellow", None),
        ("railway co-passenger", "rail_co_passenger", None),
        ("flight co-passenger", "flight_co_passenger", None),
        ("home quarantine list", "home_quarantine", None),
        ("sealed compound list", "sealed_compound", None),
        ("grassroots screening", "grassroots_screening", None),
        ("cold-chain exposure", "cold_chain_exposure", None),
        ("fever-clinic visit", "fever_clinic", None),
        ("declared fever", "declared_fever", None),
        ("declared symptoms", "declared_symptoms", None),
        ("declared contact with a case", "declared_case_contact", None),
    ],
)
def test_default_has_a_rule_for_each_seed_source(
    default: RuleSet, topic: str, source: str, min_level: int | None
) -> None:
    assert any(
        c.source == source and c.min_level == min_level for r in default.rules for c in r.checks
    ), topic


def test_inbound_traveller_has_quarantine_and_home_monitoring_windows(default: RuleSet) -> None:
    windows = {
        r.colour: c.days for r in default.rules for c in r.checks if c.source == "inbound_traveller"
    }
    assert windows == {"red": 14, "yellow": 21}  # 14 + 7


def test_roaming_rules_clear_by_phone_level_community_verification(default: RuleSet) -> None:
    roaming = [r for r in default.rules if any(c.source == "telecom_roaming" for c in r.checks)]
    assert roaming
    for r in roaming:
        assert "phone_community_verified" in {c.source for c in r.clears}, r.id


def test_every_rule_reads_in_chinese_and_english(default: RuleSet) -> None:
    for r in default.rules:
        assert CJK.search(r.text_zh) and CJK.search(r.what_clears_zh), r.id
        assert not CJK.search(r.text_en) and not CJK.search(r.what_clears_en), r.id
        assert r.text_en[0].isupper() and r.what_clears_en[0].isupper(), r.id


def test_default_has_local_and_shared_rules(default: RuleSet) -> None:
    scopes = {r.id: r.scope for r in default.rules}
    assert scopes["home-quarantine"] == "local"  # a Tianjin district list
    assert scopes["sealed-compound"] == "local"
    assert scopes["high-risk-county-travel"] == "local"  # the Dalian pattern
    assert scopes["close-contact"] == "shared"  # national database
    assert scopes["confirmed-case"] == "shared"


def test_plan_rules_are_plain_dicts_the_matcher_takes(default: RuleSet) -> None:
    plan = default.plan_rules()
    assert [p["id"] for p in plan] == list(default.rule_ids)
    for p in plan:
        assert set(p) == {"id", "colour", "match", "checks", "clears"}
        assert p["colour"] in ("yellow", "red") and p["match"] in ("any", "all")
        for c in p["checks"] + p["clears"]:
            assert set(c) <= {"source", "days", "hours", "min_level"}
            assert not {"days", "hours"} <= set(c)
            assert c["source"] in SOURCES
            assert isinstance(c.get("days", 1), int) and c.get("days", 1) > 0
            assert isinstance(c.get("hours", 1), int) and c.get("hours", 1) > 0
            # "hours" only on an hourly source (the matcher refuses it elsewhere).
            assert "hours" not in c or SOURCES[c["source"]].hourly
    by_id = {p["id"]: p for p in plan}
    assert by_id["fever-clinic-visit"]["checks"] == [{"source": "fever_clinic", "days": 3}]
    assert by_id["home-quarantine"]["checks"] == [{"source": "home_quarantine"}]
    assert {"source": "nat_negative", "hours": 48} in by_id["medium-risk-county-travel"]["clears"]
    assert by_id["high-risk-county-roaming"]["checks"] == [
        {"source": "telecom_roaming", "days": 14, "min_level": 3}
    ]


def test_rule_lookup(default: RuleSet) -> None:
    assert default.rule("close-contact").colour == "red"
    with pytest.raises(KeyError, match="no-such-rule"):
        default.rule("no-such-rule")


def test_rule_set_is_frozen(default: RuleSet) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        default.version = "x"  # type: ignore[misc]


# --- windows -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "days"),
    [
        (Window(1, "hours"), 1),
        (Window(24, "hours"), 1),
        (Window(25, "hours"), 2),
        (Window(48, "hours"), 2),
        (Window(72, "hours"), 3),
        (Window(168, "hours"), 7),
        (Window(14, "days"), 14),
    ],
)
def test_hour_windows_compile_to_whole_days_rounding_up(window: Window, days: int) -> None:
    assert window.days == days


@pytest.mark.parametrize(
    ("window", "hours"),
    [(Window(1, "hours"), 1), (Window(47, "hours"), 47), (Window(2, "days"), 48)],
)
def test_window_hours_are_exact(window: Window, hours: int) -> None:
    assert window.hours == hours


def test_only_test_results_are_hourly() -> None:
    assert {n for n, s in SOURCES.items() if s.hourly} == {"nat_negative"}
    assert all(s.dated for s in SOURCES.values() if s.hourly)
    with pytest.raises(ValueError, match="hourly source must be dated"):
        dataclasses.replace(SOURCES["home_quarantine"], hourly=True)


def _plan_clears(clears: list[dict[str, Any]], **rule: Any) -> list[dict[str, Any]]:
    rs = parse_rule_set(to_toml(one_rule(clears=clears, **rule)))
    plan = rs.plan_rules()[0]
    return [*plan["checks"], *plan["clears"]]


def test_window_hours_on_an_hourly_source_compile_to_exact_hours() -> None:
    assert _plan_clears([{"source": "nat_negative", "window_hours": 47}]) == [
        {"source": "close_contact", "days": 14},
        {"source": "nat_negative", "hours": 47},
    ]
    assert _plan_clears([{"source": "nat_negative", "window_hours": 48}])[1] == {
        "source": "nat_negative",
        "hours": 48,
    }


def test_window_days_on_an_hourly_source_stay_days() -> None:
    # The matcher reads {"days": N} on an hourly source as N * 24 hours, exactly.
    assert _plan_clears([{"source": "nat_negative", "window_days": 2}])[1] == {
        "source": "nat_negative",
        "days": 2,
    }


def test_window_hours_on_a_daily_source_round_up_to_days() -> None:
    got = _plan_clears(
        [{"source": "quarantine_released", "window_hours": 25}],
        window_days=None,
        window_hours=49,
    )
    assert got == [
        {"source": "close_contact", "days": 3},  # 49 hours: 3 whole days
        {"source": "quarantine_released", "days": 2},  # 25 hours: 2 whole days
    ]


def test_check_hours_and_days_of_compiled_checks() -> None:
    rs = parse_rule_set(
        to_toml(
            one_rule(
                clears=[{"source": "nat_negative", "window_hours": 30}],
                window_days=None,
                window_hours=30,
            )
        )
    )
    [raising], [clear] = rs.rules[0].checks, rs.rules[0].clears
    assert (raising.hourly, raising.days, raising.hours) == (False, 2, None)
    assert (clear.hourly, clear.days, clear.hours) == (True, 2, 30)
    assert raising.key() == ("close_contact", 2, None)
    assert clear.key() == ("nat_negative", 30, None)


def test_every_negative_test_clear_of_the_default_set_is_exact(default: RuleSet) -> None:
    clears = [c for r in default.rules for c in r.clears if c.source == "nat_negative"]
    assert clears and all(c.window is not None and c.window.unit == "hours" for c in clears)
    for rule in default.plan_rules():
        for c in rule["clears"]:
            if c["source"] == "nat_negative":
                assert set(c) == {"source", "hours"}
                assert c["hours"] in (24, 48, 72, 168)


def test_48_hours_and_2_days_are_one_check_on_a_display() -> None:
    doc = one_rule(clears=[{"source": "nat_negative", "window_hours": 48}])
    second = copy.deepcopy(doc["rules"][0])
    second.update(id="other", clears=[{"source": "nat_negative", "window_days": 2}])
    doc["rules"].append(second)
    rs = parse_rule_set(to_toml(doc))
    assert rs.check_count == 2  # close_contact/14 days and nat_negative/48 hours


def test_47_hours_is_another_check_on_an_hourly_source_but_not_on_a_daily_one() -> None:
    doc = one_rule(clears=[{"source": "nat_negative", "window_hours": 47}])
    second = copy.deepcopy(doc["rules"][0])
    second.update(id="other", clears=[{"source": "nat_negative", "window_days": 2}])
    doc["rules"].append(second)
    assert parse_rule_set(to_toml(doc)).check_count == 3  # nat_negative 47 h and 48 h

    daily = one_rule(clears=[{"source": "quarantine_released", "window_hours": 47}])
    other = copy.deepcopy(daily["rules"][0])
    other.update(id="other", clears=[{"source": "quarantine_released", "window_days": 2}])
    daily["rules"].append(other)
    assert parse_rule_set(to_toml(daily)).check_count == 2  # both are 2 whole days


def test_rule_window_is_the_default_for_checks_but_not_for_clears() -> None:
    rs = parse_rule_set(to_toml(one_rule(window_hours=72, window_days=None)))
    rule = rs.rule("close-contact")
    assert rule.window == Window(72, "hours")
    assert rule.checks[0].days == 3
    assert rule.clears[0].days == 14


# --- scope (R6): the seed's Dalian case at the rule level --------------------------------------


def test_shared_only_drops_every_local_rule(default: RuleSet) -> None:
    shared = default.shared_only()
    assert all(r.scope == "shared" for r in shared.rules)
    assert [r.id for r in shared.rules] == [r.id for r in default.rules if r.scope == "shared"]
    assert shared.version == default.version + "+shared"
    assert shared.plan_rules() == [r.plan_dict() for r in default.rules if r.scope == "shared"]


def test_tianjin_only_red_rules_are_absent_from_the_shared_set(default: RuleSet) -> None:
    local_red = {r.id for r in default.rules if r.scope == "local" and r.colour == "red"}
    assert {"high-risk-county-travel", "home-quarantine"} <= local_red
    assert local_red.isdisjoint(default.shared_only().rule_ids)


def test_dalian_traveller_is_red_in_tianjin_and_at_most_yellow_elsewhere(default: RuleSet) -> None:
    # A traveller from a high-risk county (Dalian's Ganjingzi is graded 3 here).
    today = date(2020, 12, 16)
    me = "210211198001011234"
    rows = [{"source": "declared_travel", "id_number": me, "day": "2020-12-15", "county": 210211}]
    feed = Feed(rows, {210211: 3})
    local = evaluate(default, feed, me, [], today)
    exported = evaluate(default.shared_only(), feed, me, [], today)
    assert local.colour == "red" and "high-risk-county-travel" in local.fired
    assert exported.colour == "yellow" and "high-risk-county-travel" not in exported.fired


def test_district_list_red_exports_green(default: RuleSet) -> None:
    me = "120101199001011239"
    feed = Feed([{"source": "home_quarantine", "id_number": me, "day": None, "county": None}], {})
    today = date(2020, 12, 16)
    assert evaluate(default, feed, me, [], today).colour == "red"
    assert evaluate(default.shared_only(), feed, me, [], today).colour == "green"


# --- activation --------------------------------------------------------------------------------


def test_a_future_dated_set_waits_and_the_previous_one_stays() -> None:
    now = datetime(2021, 1, 5, 12, tzinfo=UTC)
    old = parse_rule_set(to_toml(one_rule() | {"version": "old"}))
    new = parse_rule_set(
        to_toml(one_rule() | {"version": "new", "valid_from": "2021-01-06T00:00:00+08:00"})
    )
    assert new.valid_from == datetime(2021, 1, 5, 16, tzinfo=UTC)
    assert select_active([old, new], now) is old
    assert select_active([old, new], now + timedelta(hours=4)) is new
    assert select_active([new], now) is None


def test_toml_datetime_with_offset_is_accepted() -> None:
    text = to_toml(one_rule()).replace(
        'version = "test-1"', 'version = "test-1"\nvalid_from = 2021-01-06T00:00:00+08:00'
    )
    assert parse_rule_set(text).valid_from == datetime(2021, 1, 5, 16, tzinfo=UTC)


# --- validation: every error names the file, the rule id and the field -------------------------

RULE_ERRORS: list[tuple[str, dict[str, Any], str, str]] = [
    ("colour green", {"colour": "green"}, "colour", "'yellow' or 'red'"),
    ("unknown scope", {"scope": "national"}, "scope", "'local' or 'shared'"),
    ("missing scope", {"scope": None}, "scope", "Field required"),
    ("unknown match", {"match": "most"}, "match", "'any' or 'all'"),
    ("zero window", {"window_days": 0}, "window_days", "greater than 0"),
    (
        "negative hours",
        {"window_days": None, "window_hours": -48},
        "window_hours",
        "greater than 0",
    ),
    ("slipped digit", {"window_days": 1400}, "window_days", "less than or equal to 366"),
    ("window as text", {"window_days": "14"}, "window_days", "valid integer"),
    ("days and hours", {"window_hours": 48}, "window_hours", "not both"),
    (
        "unknown source",
        {"checks": [{"source": "close_contacts"}]},
        "checks[0].source",
        "unknown source 'close_contacts'",
    ),
    (
        "min_level on a source without counties",
        {"checks": [{"source": "close_contact", "min_level": 2}]},
        "checks[0].min_level",
        "min_level applies only to county sources",
    ),
    (
        "min_level out of range",
        {"checks": [{"source": "declared_travel", "min_level": 4}]},
        "checks[0].min_level",
        "less than or equal to 3",
    ),
    (
        "clearing source raising",
        {"checks": [{"source": "nat_negative"}]},
        "checks[0].source",
        "clearing source",
    ),
    (
        "raising source clearing",
        {"clears": [{"source": "confirmed", "window_days": 2}]},
        "clears[0].source",
        "raises risk",
    ),
    (
        "clear without a window",
        {"clears": [{"source": "nat_negative"}]},
        "clears[0].window_hours",
        "needs its own window",
    ),
    (
        "dated source without a window",
        {"window_days": None},
        "checks[0].window_days",
        "is dated",
    ),
    (
        "window on an undated source",
        {"window_days": None, "checks": [{"source": "home_quarantine", "window_days": 3}]},
        "checks[0].window_days",
        "undated",
    ),
    (
        "rule window with only undated sources",
        {"checks": [{"source": "sealed_compound"}]},
        "window_days",
        "undated",
    ),
    (
        "phone clear without a phone check",
        {"clears": [{"source": "phone_community_verified", "window_days": 14}]},
        "clears[0].source",
        "could never clear",
    ),
    (
        "same check twice",
        {"checks": [{"source": "close_contact"}, {"source": "close_contact", "window_hours": 336}]},
        "checks[1]",
        "same check as checks[0]",
    ),
    ("no checks", {"checks": []}, "checks", "at least 1 item"),
    ("missing text", {"text_en": None}, "text_en", "Field required"),
    ("empty text", {"what_clears_zh": ""}, "what_clears_zh", "at least 1 character"),
    ("misspelt field", {"windows_days": 14}, "windows_days", "unknown field"),
    (
        "misspelt check field",
        {"checks": [{"source": "close_contact", "level": 2}]},
        "checks[0].level",
        "unknown field",
    ),
]


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [case[1:] for case in RULE_ERRORS],
    ids=[case[0] for case in RULE_ERRORS],
)
def test_rule_error_names_file_rule_and_field(
    changes: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(RuleSetError) as caught:
        parse_rule_set(to_toml(one_rule(**changes)), filename="policy/2021-01.toml")
    err = caught.value
    path = f"rules[close-contact].{field}"
    assert path in [p for p, _ in err.violations], err.violations
    message = dict(err.violations)[path]
    assert fragment in message
    assert f"policy/2021-01.toml: {path}: {message}" in str(err).splitlines()
    assert isinstance(err, ValueError)


def test_bad_rule_id_is_named_as_written() -> None:
    with pytest.raises(RuleSetError) as caught:
        parse_rule_set(to_toml(one_rule(id="Close Contact")), filename="f.toml")
    assert "f.toml: rules[Close Contact].id: String should match pattern" in str(caught.value)


def test_rule_without_id_is_named_by_position() -> None:
    with pytest.raises(RuleSetError) as caught:
        parse_rule_set(to_toml(one_rule(id=None)), filename="f.toml")
    assert caught.value.violations == [("rules[#1].id", "Field required")]


def test_duplicate_rule_id() -> None:
    doc = one_rule()
    doc["rules"].append(copy.deepcopy(doc["rules"][0]))
    with pytest.raises(RuleSetError) as caught:
        parse_rule_set(to_toml(doc), filename="f.toml")
    assert "f.toml: rules[close-contact].id: duplicate rule id (rule #1 and #2)" in str(
        caught.value
    )


def test_more_than_64_rules() -> None:
    doc = one_rule()
    base = doc["rules"].pop()
    for i in range(65):
        doc["rules"].append(base | {"id": f"r-{i}", "window_days": 1 + i % 20})
    with pytest.raises(RuleSetError) as caught:
        parse_rule_set(to_toml(doc), filename="f.toml")
    assert "f.toml: rules[r-64]: 65 rules; the matcher holds at most 64" in str(caught.value)


def test_more_than_42_checks_names_the_rule_that_crosses_the_line() -> None:
    doc = one_rule()
    base = doc["rules"].pop() | {"clears": []}
    for i in range(1, 44):
        doc["rules"].append(base | {"id": f"r-{i}", "window_days": i})
    with pytest.raises(RuleSetError) as caught:
        parse_rule_set(to_toml(doc), filename="f.toml")
    assert caught.value.violations == [
        (
            "rules[r-43].checks",
            "this rule brings the set to 43 distinct checks; a display runs at most 42",
        )
    ]
    doc["rules"].pop()
    assert parse_rule_set(to_toml(doc)).check_count == 42


@pytest.mark.parametrize(
    ("top", "field", "fragment"),
    [
        ({"version": ""}, "version", "should match pattern"),
        ({"version": None}, "version", "Field required"),
        ({"valid_from": "2021-01-06T00:00:00"}, "valid_from", "timezone"),
        ({"rules": []}, "rules", "Field required"),  # no [[rules]] at all
        ({"author": "x"}, "author", "unknown field"),
    ],
)
def test_rule_set_level_errors_name_file_and_field(
    top: dict[str, Any], field: str, fragment: str
) -> None:
    doc = one_rule()
    for k, v in top.items():
        if v is None:
            doc.pop(k)
        else:
            doc[k] = v
    with pytest.raises(RuleSetError) as caught:
        parse_rule_set(to_toml(doc), filename="f.toml")
    assert any(p == field and fragment in m for p, m in caught.value.violations)
    assert f"f.toml: {field}: " in str(caught.value)


def test_every_violation_is_reported_at_once() -> None:
    doc = one_rule(colour="green", window_days=0)
    with pytest.raises(RuleSetError) as caught:
        parse_rule_set(to_toml(doc), filename="f.toml")
    paths = {p for p, _ in caught.value.violations}
    assert {"rules[close-contact].colour", "rules[close-contact].window_days"} <= paths


def test_toml_syntax_error_names_the_file() -> None:
    with pytest.raises(RuleSetError, match=r"^broken\.toml: : not valid TOML: .*line 2"):
        parse_rule_set('version = "x"\n[[rules]\n', filename="broken.toml")


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(RuleSetError, match="nope.toml"):
        load_rule_set(missing)


def test_load_rule_set_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(to_toml(one_rule()), encoding="utf-8")
    rs = load_rule_set(path)
    assert rs.filename == str(path)
    assert rs.rule_ids == ("close-contact",)


# --- the plain-Python oracle counts hourly sources to the hour ----------------------------------


def _hour(d: date, hour_of_day: int) -> int:
    return (d - date(1970, 1, 1)).days * 24 + hour_of_day


def _contact_cleared_within_48_hours(
    nat_row: dict[str, Any], today: date, hour: int | None
) -> bool:
    rs = parse_rule_set(to_toml(one_rule(clears=[{"source": "nat_negative", "window_hours": 48}])))
    me = "120101199001011239"
    rows = [
        {"source": "close_contact", "id_number": me, "day": today.isoformat(), "county": None},
        {"source": "nat_negative", "id_number": me, "county": None} | nat_row,
    ]
    outcome = evaluate(rs, Feed(rows, {}), me, [], today, hour)
    assert outcome.colour in ("green", "red")
    return outcome.colour == "green"


@pytest.mark.parametrize(
    ("tested_at", "now", "cleared"),
    [
        (10, 10, True),
        (10 - 47, 10, True),
        (10 - 48, 10, False),  # exactly 48 hours old: out
        (11, 10, False),  # not yet taken at 10:00
        (10 - 48, 9, True),  # an hour earlier it still counted
    ],
)
def test_the_oracle_counts_a_negative_test_to_the_hour(
    tested_at: int, now: int, cleared: bool
) -> None:
    today = date(2020, 12, 16)
    hour = _hour(today, 0) + tested_at
    row = {"day": (date(1970, 1, 1) + timedelta(days=hour // 24)).isoformat(), "hour": hour}
    assert _contact_cleared_within_48_hours(row, today, _hour(today, now)) is cleared


def test_the_oracle_reads_a_day_only_row_of_an_hourly_source_as_its_midnight() -> None:
    today = date(2020, 12, 16)
    yesterday = {"day": (today - timedelta(days=1)).isoformat()}
    before = {"day": (today - timedelta(days=2)).isoformat()}
    # Yesterday 00:00 is 47 hours before today 23:00; the day before is 71 hours.
    assert _contact_cleared_within_48_hours(yesterday, today, None) is True
    assert _contact_cleared_within_48_hours(before, today, None) is False
    assert _contact_cleared_within_48_hours(before, today, _hour(today, 0)) is False
    assert _contact_cleared_within_48_hours(
        {"day": None, "hour": _hour(today, 5)}, today, _hour(today, 6)
    )


def test_the_oracle_refuses_an_hour_of_another_day() -> None:
    today = date(2020, 12, 16)
    with pytest.raises(ValueError, match="not an hour of 2020-12-16"):
        _contact_cleared_within_48_hours({"day": None}, today, _hour(today, 24))
