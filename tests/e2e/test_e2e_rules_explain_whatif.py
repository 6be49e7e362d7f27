"""Explain (R16), what-if and feed freshness through the four real processes and the CLI.

The residence feed (an attribute source new in the catalogue) goes through the risk index like
any other feed, and the what-if report counts colour transitions per district from it.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from healthcode.v1 import colour_pb2, common_pb2, risk_index_pb2
from typer.testing import CliRunner

from clients import cli, feedgen
from clients.stack import Stack
from services.rules import DEFAULT_RULE_SET_PATH, load_rule_set
from tests.e2e.rules_support import ADMIN, SUPPORT, Stubs, stubs
from tests.e2e.waits import eventually, today

DEFAULT = load_rule_set(DEFAULT_RULE_SET_PATH)
PEOPLE = feedgen.make_population(12, seed=4711, second_sim_rate=0.5, no_phone_rate=0.0)
BINHAI, NANKAI = 120116, 120104
# The first eight live in Binhai, the rest in Nankai.
RESIDENCE = {p.id_number: (BINHAI if n < 8 else NANKAI) for n, p in enumerate(PEOPLE)}
# Secondary contacts: three in Binhai, one in Nankai (yellow under the default rules).
CONTACTS = [PEOPLE[0], PEOPLE[1], PEOPLE[2], PEOPLE[9]]
DRAFT = (
    DEFAULT_RULE_SET_PATH.read_text(encoding="utf-8")
    .replace('version = "2020.12.16-tianjin"', 'version = "2021.01.06-secondary-red"')
    .replace(
        'id = "secondary-contact"\ncolour = "yellow"', 'id = "secondary-contact"\ncolour = "red"'
    )
)
RED, YELLOW, GREEN = common_pb2.COLOUR_RED, common_pb2.COLOUR_YELLOW, common_pb2.COLOUR_GREEN
PUBLIC_SECURITY = common_pb2.Actor(role=common_pb2.ACTOR_ROLE_FEED, principal="public-security")


@pytest.fixture(scope="module")
def services(module_stack: Stack) -> Iterator[Stubs]:
    with stubs(module_stack) as s:
        s.register(PEOPLE)
        s.wait_registered(len(PEOPLE), sum(len(p.phones) for p in PEOPLE))
        residence = [
            feedgen.row("residence", id_number=i, county=county) for i, county in RESIDENCE.items()
        ]
        # The household feed is a full list: it replaces what the source held.
        s.ingest(residence, "household-2021-01-06", PUBLIC_SECURITY, replace=True)
        contacts = [
            feedgen.row("secondary_contact", id_number=p.id_number, day=_today()) for p in CONTACTS
        ]
        s.ingest(contacts, "cdc-secondary")
        s.wait_colour()
        yield s


def invoke(stack: Stack, *args: str) -> tuple[int, str]:
    p = stack.peers
    result = CliRunner().invoke(
        cli.app,
        [
            "--declaration", p.declaration,
            "--risk-index", p.risk_index,
            "--colour", p.colour,
            "--display", p.display,
            *args,
        ],
        env={"COLUMNS": "200"},
    )  # fmt: skip
    return result.exit_code, result.output


def test_the_risk_index_takes_the_new_residence_source_like_any_feed(services: Stubs) -> None:
    listed = {
        s.name: s
        for s in services.risk_index.ListSources(risk_index_pb2.ListSourcesRequest()).sources
    }
    residence = listed["residence"]
    assert residence.row_count == len(PEOPLE) and residence.has_county and not residence.dated
    assert not residence.stale  # fed a moment ago; a week may pass before it is


def test_what_if_counts_transitions_per_district_and_activates_nothing(services: Stubs) -> None:
    before = services.colour.GetStatus(colour_pb2.GetStatusRequest())
    w = services.colour.WhatIf(colour_pb2.WhatIfRequest(actor=ADMIN, text=DRAFT))
    assert (w.active_version, w.draft_version) == (DEFAULT.version, "2021.01.06-secondary-red")
    cells = {(t.from_colour, t.to_colour): t.persons for t in w.transitions}
    assert cells[(YELLOW, RED)] == len(CONTACTS) and w.changed == len(CONTACTS)
    assert cells[(GREEN, GREEN)] == w.person_count - len(CONTACTS)
    assert (w.active_counts.yellow, w.draft_counts.red) == (len(CONTACTS), len(CONTACTS))
    assert w.district_source == "residence"
    by_district = {d.county: d for d in w.districts}
    want = Counter(RESIDENCE[p.id_number] for p in CONTACTS)
    assert {c: d.changed for c, d in by_district.items()} == dict(want)
    assert [(t.from_colour, t.to_colour, t.persons) for t in by_district[BINHAI].transitions] == [
        (YELLOW, RED, 3)
    ]
    assert w.changed_without_district == 0 and not w.district_freshness.stale

    after = services.colour.GetStatus(colour_pb2.GetStatusRequest())
    assert after.rule_set_version == before.rule_set_version == DEFAULT.version
    assert services.show(CONTACTS[0].id_number).verdict.colour == YELLOW


def test_what_if_is_for_admins_and_refuses_a_draft_that_colours_by_address(
    services: Stubs,
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        services.colour.WhatIf(colour_pb2.WhatIfRequest(actor=SUPPORT, text=DRAFT))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    by_address = DRAFT.replace(
        'checks = [{ source = "sealed_compound" }]',
        'checks = [{ source = "residence", min_level = 1 }]',
    )
    with pytest.raises(grpc.RpcError) as bad:
        services.colour.WhatIf(
            colour_pb2.WhatIfRequest(actor=ADMIN, text=by_address, filename="jan.toml")
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "rules[sealed-compound].checks[0].source" in (bad.value.details() or "")


def test_cli_what_if_prints_the_matrix_rules_and_districts(
    module_stack: Stack, services: Stubs, tmp_path: Path
) -> None:
    draft = tmp_path / "secondary-red.toml"
    draft.write_text(DRAFT, encoding="utf-8")
    code, out = invoke(module_stack, "what-if", str(draft))
    assert code == 0, out
    assert "Nothing was activated" in out and "2021.01.06-secondary-red" in out
    assert f"{len(CONTACTS)} persons change" in out
    assert "120116 滨海新区" in out and "yellow->red 3" in out
    assert "colour yellow -> red" in out  # what the draft changes in the rule
    code, out = invoke(module_stack, "what-if", str(tmp_path / "missing.toml"))
    assert code != 0


def test_verdicts_name_the_feeds_they_depend_on_that_are_stale(services: Stubs) -> None:
    person = PEOPLE[5]  # green
    shown = services.show(person.id_number)
    v = shown.verdict
    assert v.colour == GREEN and v.stale
    stale = {f.source: f for f in v.stale_feeds}
    # Never fed in this stack: stale, with no last update. Fed a moment ago: fresh.
    assert "confirmed" in stale and not stale["confirmed"].HasField("last_updated")
    assert "secondary_contact" not in stale
    assert list(v.stale_sources) == sorted(stale)
    # A verifier scanning the code sees the same flag with the colour.
    scanned = services.scan(shown.token)
    assert scanned.verdict.stale and "confirmed" in scanned.verdict.stale_sources

    # The confirmed-case feed arrives (for someone else): that source is fresh from then on.
    services.ingest(
        [feedgen.row("confirmed", id_number=PEOPLE[11].id_number, day=_today())], "cdc-confirmed"
    )
    fresh = eventually(
        "the colour replica to learn that the confirmed feed is fresh",
        lambda: services.evaluate(person.id_number),
        lambda verdict: "confirmed" not in verdict.stale_sources,
    )
    assert fresh.stale  # other feeds (telecom, fever clinics ...) have still never arrived


def test_explain_gives_rows_clearing_and_the_freshness_of_every_source(
    module_stack: Stack, services: Stubs
) -> None:
    person = CONTACTS[1]
    x = services.explain(person.id_number)
    assert x.verdict.colour == YELLOW
    (rule,) = x.rules
    assert (rule.rule_id, rule.outcome, rule.scope, rule.window) == (
        "secondary-contact",
        colour_pb2.RULE_OUTCOME_FIRED,
        "shared",
        "14 days",
    )
    assert [(e.source, e.day) for e in rule.evidence] == [("secondary_contact", today())]
    assert list(rule.clearing_sources) == ["nat_negative", "quarantine_released"]
    assert rule.what_clears_en.startswith("Turns green on a verified negative")
    assert x.masked_name.startswith("测") and x.masked_id_number.startswith(person.id_number[:2])
    assert person.id_number not in str(x)
    sources = {f.source: f for f in x.sources}
    assert set(sources) == DEFAULT.sources()
    assert not sources["secondary_contact"].stale
    assert sources["secondary_contact"].max_staleness_hours == 24
    assert sources["nat_negative"].stale and sources["nat_negative"].clearing

    code, out = invoke(module_stack, "explain", person.id_number)
    assert code == 0, out
    assert "YELLOW" in out and "secondary-contact" in out and today() in out
    assert "STALE" in out and "nat_negative" in out and "14 days" in out
    assert person.id_number not in out
    code, out = invoke(module_stack, "explain", person.id_number, "--all-sources")
    assert code == 0 and "fresh" in out


def test_explain_names_the_masked_phone_of_a_second_sim(services: Stubs) -> None:
    holder = next(p for p in PEOPLE if len(p.phones) == 2 and p not in CONTACTS)
    roaming = feedgen.row("telecom_roaming", phone=holder.phones[1], day=_today(), county=370213)
    services.grade_counties({370213: 3})
    services.wait_colour(services.ingest([roaming], "telecom-explain"))
    x = services.explain(holder.id_number)
    assert x.verdict.colour == RED
    rows = [e for r in x.rules for e in r.evidence]
    masked = holder.phones[1][:3] + "****" + holder.phones[1][-4:]
    assert {(e.source, e.masked_phone, e.county, e.county_level) for e in rows} == {
        ("telecom_roaming", masked, 370213, common_pb2.COUNTY_RISK_LEVEL_HIGH)
    }
    assert holder.phones[1] not in str(x)


def _today() -> dt.date:
    return dt.date.fromisoformat(today())
