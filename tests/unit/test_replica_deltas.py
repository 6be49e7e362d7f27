"""A replica fed deltas holds the same verdicts for everyone as one given the whole index
(issue 8): a model test over random change sequences through the real risk index logic, the
wire form of the changes and the colour engine."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import healthcode_matcher as hm
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services._common import changes, days
from services._common.actors import Actor, Role
from services._common.errors import FailedPrecondition
from services._common.identifiers import mask_id_number, mask_phone
from services.colour.engine import ColourEngine
from services.colour.rulestore import compile_rules
from services.risk_index.logic import Delta, RiskIndex
from services.risk_index.model import KeyedPerson, RawRow
from services.rules import DEFAULT_RULE_SET_PATH, load_rule_set
from tests import support
from tests.support import SECRET, Clock

IDS = hm.synthetic_id_numbers(12, 5150).decode().split()
PHONES = hm.synthetic_phones(8, 5150).decode().split()
HASHER = hm.Hasher(SECRET)
FEED = Actor(Role.FEED, "cdc")
SERVICE = Actor(Role.SERVICE, "declaration")
ADMIN = Actor(Role.ADMIN, "ops")
NOW = dt.datetime(2024, 5, 10, 10, 0, tzinfo=days.SHANGHAI)
TODAY = days.today(NOW)
COUNTIES = (420106, 120101)
RULES = compile_rules(load_rule_set(DEFAULT_RULE_SET_PATH))

# One step of a random history: what a city's feeds and registrations do.
person = st.integers(0, len(IDS) - 1)
phone = st.integers(0, len(PHONES) - 1)
steps = st.one_of(
    st.tuples(st.just("register"), st.lists(person, min_size=1, max_size=4)),
    st.tuples(st.just("link"), person, phone),
    st.tuples(st.just("unlink"), phone),
    st.tuples(
        st.just("rows"),
        st.sampled_from(["close_contact", "secondary_contact", "confirmed", "home_quarantine"]),
        st.lists(person, min_size=1, max_size=3),
        st.integers(0, 20),
        st.booleans(),
    ),
    st.tuples(
        st.just("roaming"), st.lists(phone, min_size=1, max_size=3), st.sampled_from(COUNTIES)
    ),
    st.tuples(st.just("nat"), person, st.integers(1, 100)),
    st.tuples(st.just("county"), st.sampled_from(COUNTIES), st.integers(1, 3)),
)


def apply(ri: RiskIndex, n: int, step: tuple) -> None:  # type: ignore[type-arg]
    kind = step[0]
    if kind == "register":
        ri.register_people(
            SERVICE,
            [KeyedPerson(HASHER.person_key(IDS[i]), mask_id_number(IDS[i])) for i in step[1]],
        )
    elif kind == "link":
        _, i, p = step
        ri.link_phone(
            SERVICE,
            HASHER.person_key(IDS[i]),
            mask_id_number(IDS[i]),
            HASHER.phone_key(PHONES[p]),
            mask_phone(PHONES[p]),
        )
    elif kind == "unlink":
        ri.unlink_phone(SERVICE, HASHER.phone_key(PHONES[step[1]]))
    elif kind == "rows":
        _, source, who, back, replace = step
        undated = source == "home_quarantine"
        rows = [
            RawRow("id_number", IDS[i], day="" if undated else days.format_day(TODAY - back))
            for i in who
        ]
        ri.ingest_batch(FEED, source, f"b{n}", rows, replace=replace and undated)
    elif kind == "roaming":
        _, who, county = step
        day = days.format_day(TODAY - 1)
        ri.ingest_batch(
            FEED,
            "telecom_roaming",
            f"b{n}",
            [RawRow("phone", PHONES[p], day=day, county=county) for p in who],
        )
    elif kind == "nat":
        _, i, hours = step
        ri.ingest_batch(
            FEED,
            "nat_negative",
            f"b{n}",
            [RawRow("id_number", IDS[i], at=NOW - dt.timedelta(hours=hours))],
        )
    else:
        ri.set_county_level(ADMIN, step[1], step[2])


def risk_index_in(directory: Path) -> RiskIndex:
    """The real risk index logic on a SQLite file in `directory`, its clock stopped at NOW."""
    return support.risk_index_in(directory, clock=lambda: NOW)


def verdicts_by_key(engine: ColourEngine, shared: bool = True) -> dict[bytes, tuple[object, ...]]:
    """Everyone's colour and reasons, and (with `shared`) their colour for other provinces."""
    out: dict[bytes, tuple[object, ...]] = {}
    for id_number in IDS:
        key = HASHER.person_key(id_number)
        a = engine.evaluate(key)
        out[key] = (a.colour, tuple((r.rule_id, r.source, r.day, r.cleared) for r in a.reasons))
        if shared:
            out[key] += (engine.evaluate(key, shared_only=True).colour,)
    return out


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=st.lists(steps, min_size=1, max_size=12))
def test_a_replica_fed_deltas_agrees_with_one_given_each_whole_version(
    tmp_path_factory: object,
    history: list[tuple],  # type: ignore[type-arg]
) -> None:
    data: Path = tmp_path_factory.mktemp("ri")  # type: ignore[attr-defined]
    ri = risk_index_in(data)
    clock = Clock(NOW)
    by_deltas = ColourEngine(SECRET, RULES, now=clock)
    # A display's replica: the same deltas, no verdicts for other provinces.
    display = ColourEngine(SECRET, RULES, now=clock, shared_verdicts=False)
    coloured: set[bytes] = set()
    whole = ColourEngine(SECRET, RULES, now=clock)
    try:
        # A city already running: everyone registered, phones linked, two counties graded.
        prelude: list[tuple[object, ...]] = [("register", list(range(len(IDS))))]
        prelude += [("link", p, p) for p in range(len(PHONES))]
        prelude += [("county", COUNTIES[0], 3), ("county", COUNTIES[1], 2)]
        # Some phones seen in both counties: a later re-grading or a phone changing hands
        # must change exactly the right people's colours.
        prelude += [("roaming", [0, 1], COUNTIES[0]), ("roaming", [2, 3], COUNTIES[1])]
        for n, step in enumerate(prelude):
            apply(ri, -1 - n, step)
        by_deltas.install_index(ri.current.index)  # the first version comes whole
        display.install_index(ri.current.index)
        watch = ri.watch(ri.current.version, lambda: True)
        assert next(watch).version == ri.current.version  # "you are current"
        for n, step in enumerate(history):
            before = ri.current.version
            apply(ri, n, step)
            if ri.current.version == before:
                continue  # nothing changed: no version
            delta = next(watch)
            assert isinstance(delta, Delta) and delta.from_version == by_deltas.index_version
            # Through the wire form, as a replica receives it.
            received = changes.from_proto(changes.to_proto(delta.from_version, delta.changes))
            assert by_deltas.apply_changes(received, delta.version)
            assert display.apply_changes(received, delta.version)
            whole.install_index(hm.Index.from_bytes(ri.current.index.to_bytes(), SECRET))
            assert by_deltas.index_version == whole.index_version == ri.current.version
            seen = verdicts_by_key(by_deltas)
            assert seen == verdicts_by_key(whole), (n, step)
            assert verdicts_by_key(display, shared=False) == {
                key: v[:2] for key, v in seen.items()
            }, (n, step)
            coloured.update(key for key, v in seen.items() if v[0])
    finally:
        ri.close()


def test_a_display_replica_refuses_the_other_provinces_question(tmp_path: Path) -> None:
    """A replica made without shared verdicts answers its own colour and says, for
    `shared_only`, where to ask instead of answering from the wrong rules."""
    ri = risk_index_in(tmp_path)
    try:
        apply(ri, 0, ("register", [0]))
        display = ColourEngine(SECRET, RULES, now=Clock(NOW), shared_verdicts=False)
        display.install_index(ri.current.index)
    finally:
        ri.close()
    key = HASHER.person_key(IDS[0])
    registered = display.evaluate(key)
    assert registered.colour == hm.Colour.GREEN and registered.registered
    with pytest.raises(FailedPrecondition, match="ask the colour service"):
        display.evaluate(key, shared_only=True)
