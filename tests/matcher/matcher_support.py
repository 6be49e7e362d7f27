"""Helpers shared by the matcher tests: byte packing, small populations, and random scenarios
that are built both in the Rust index and in the pure-Python `MemoryIndexView`."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import healthcode_matcher as hm
from healthcode_matcher.reference import MemoryIndexView, ReferenceEvaluator, ReferenceVerdict
from hypothesis import strategies as st

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
TODAY = 19_000  # 2022-01-08
LAST_HOUR = TODAY * 24 + 23  # the default evaluation hour on TODAY


def u32(ids: Iterable[int]) -> bytes:
    """Little-endian u32s, the matcher's bulk id format."""
    packed = array("I", ids)
    assert packed.itemsize == 4
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()


def from_u32(data: bytes) -> list[int]:
    unpacked = array("I")
    unpacked.frombytes(data)
    if sys.byteorder != "little":
        unpacked.byteswap()
    return unpacked.tolist()


def from_u64(data: bytes) -> list[int]:
    unpacked = array("Q")
    assert unpacked.itemsize == 8
    unpacked.frombytes(data)
    if sys.byteorder != "little":
        unpacked.byteswap()
    return unpacked.tolist()


def lines(data: bytes) -> list[str]:
    return data.decode("ascii").split()


def native_triple(verdict: hm.Verdict) -> ReferenceVerdict:
    return ReferenceVerdict(verdict.colour, verdict.fired_mask, verdict.cleared_mask)


def rules_of_mask(rule_ids: Sequence[str], mask: int) -> list[str]:
    return [rule_id for bit, rule_id in enumerate(rule_ids) if mask >> bit & 1]


# -- random scenarios --------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSpec:
    name: str
    keyed_by: str  # "person" | "phone"
    has_county: bool
    by_identifier: bool  # fed with raw identifiers (add_rows_by_identifier), else dense ids
    hourly: bool = False  # buckets keyed by hour, not day


@dataclass(frozen=True)
class RowSpec:
    source: int
    member: int  # index into the scenario's persons or phones (may be a newcomer)
    at: int | None  # a day, or an hour for an hourly source (None: undated)
    county: int


@dataclass(frozen=True)
class StepSpec:
    """The changes that make one index version, applied in this order."""

    links: tuple[tuple[int, int | None], ...]  # (phone, holder person or None to unlink)
    levels: tuple[tuple[int, int], ...]  # (county, level)
    removals: tuple[tuple[int, tuple[int, ...]], ...]  # (source, members)
    cleared: tuple[int, ...]  # sources emptied
    rows: tuple[RowSpec, ...]


@dataclass(frozen=True)
class Scenario:
    persons: int  # registered up front
    phones: int  # registered up front
    newcomers: int  # extra persons and phones that first appear in a feed row
    holders: tuple[int | None, ...]  # initial holder of each up-front phone
    sources: tuple[SourceSpec, ...]
    steps: tuple[StepSpec, ...]
    rules: tuple[dict[str, Any], ...]
    seed: int
    hour: int | None = None  # the evaluation hour on TODAY (None: the default, its last)

    @property
    def evaluation_hour(self) -> int:
        return LAST_HOUR if self.hour is None else self.hour


COUNTIES = 5  # county codes 1..5 (0 is reserved by the index)


@st.composite
def scenarios(draw: st.DrawFn, max_persons: int = 25, max_rules: int = 8) -> Scenario:
    persons = draw(st.integers(1, max_persons))
    phones = draw(st.integers(0, max_persons + 5))
    newcomers = draw(st.integers(0, 3))
    holders = tuple(
        draw(st.lists(st.none() | st.integers(0, persons - 1), min_size=phones, max_size=phones))
    )
    source_count = draw(st.integers(1, 6))
    sources = tuple(
        SourceSpec(
            f"s{i}",
            draw(st.sampled_from(["person", "phone"])),
            draw(st.booleans()),
            draw(st.booleans()),
            draw(st.booleans()),
        )
        for i in range(source_count)
    )
    day = st.none() | st.integers(TODAY - 30, TODAY + 3)
    # Hourly sources: the evaluation hour, the hour windows the plan will use, and row times
    # drawn around that hour so that rows often sit exactly on a window's edge (N hours back
    # is out, N - 1 is in), also for day windows (24 * N hours).
    hour = draw(st.none() | st.integers(TODAY * 24, LAST_HOUR))
    now = LAST_HOUR if hour is None else hour
    hour_windows = draw(st.lists(st.integers(1, 24 * 31), min_size=1, max_size=3))
    edges = sorted({w + d for w in hour_windows for d in (-1, 0, 1)})
    hours_back = st.one_of(
        st.integers(-5, 24 * 32),
        st.sampled_from(edges),
        st.integers(1, 30).flatmap(lambda n: st.sampled_from([24 * n - 1, 24 * n])),
    )
    hour_at = st.none() | hours_back.map(lambda back: now - back)

    def member_of(source: SourceSpec) -> st.SearchStrategy[int]:
        upfront = persons if source.keyed_by == "person" else phones
        limit = upfront + (newcomers if source.by_identifier else 0)
        return st.integers(0, max(limit - 1, 0))

    def usable(source: SourceSpec) -> bool:
        upfront = persons if source.keyed_by == "person" else phones
        return upfront + (newcomers if source.by_identifier else 0) > 0

    fed = st.sampled_from([i for i, s in enumerate(sources) if usable(s)] or [0])

    def draw_row() -> RowSpec:
        index = draw(fed)
        source = sources[index]
        at = draw(hour_at if source.hourly else day)
        return RowSpec(index, draw(member_of(source)), at, draw(st.integers(1, COUNTIES)))

    has_rows = any(usable(s) for s in sources)
    steps = []
    for number in range(draw(st.integers(1, 3))):
        first = number == 0
        links = (
            ()
            if first or phones == 0
            else tuple(
                draw(
                    st.lists(
                        st.tuples(
                            st.integers(0, phones - 1), st.none() | st.integers(0, persons - 1)
                        ),
                        max_size=4,
                    )
                )
            )
        )
        levels = tuple(
            draw(st.lists(st.tuples(st.integers(1, COUNTIES), st.integers(0, 3)), max_size=4))
        )
        removals: tuple[tuple[int, tuple[int, ...]], ...] = ()
        cleared: tuple[int, ...] = ()
        if not first:
            removals = tuple(
                (i, tuple(draw(st.lists(st.integers(0, max(persons, phones) - 1), max_size=4))))
                for i in draw(st.lists(st.integers(0, source_count - 1), max_size=2))
                if max(persons, phones) > 0
            )
            cleared = tuple(draw(st.lists(st.integers(0, source_count - 1), max_size=1)))
        step_rows = tuple(draw_row() for _ in range(draw(st.integers(0, 40)))) if has_rows else ()
        steps.append(StepSpec(links, levels, removals, cleared, step_rows))

    any_source = st.sampled_from(sources)
    window = st.none() | st.integers(1, 30)
    hour_window = st.sampled_from(hour_windows) | st.integers(1, 24 * 31)
    min_level = st.none() | st.integers(1, 3)

    def draw_checks(least: int, most: int) -> list[dict[str, Any]]:
        checks = []
        for _ in range(draw(st.integers(least, most))):
            source = draw(any_source)
            check: dict[str, Any] = {"source": source.name}
            if source.hourly and draw(st.booleans()):
                check["hours"] = draw(hour_window)
            elif (days := draw(window)) is not None:
                check["days"] = days
            if source.has_county and (level := draw(min_level)) is not None:
                check["min_level"] = level
            checks.append(check)
        return checks

    rules = []
    for number in range(draw(st.integers(1, max_rules))):
        rule: dict[str, Any] = {
            "id": f"r{number}",
            "colour": draw(st.sampled_from(["yellow", "red"])),
            "checks": draw_checks(1, 4),
        }
        match = draw(st.sampled_from([None, "any", "all"]))
        if match is not None:
            rule["match"] = match
        clears = draw_checks(0, 2)
        if clears:
            rule["clears"] = clears
        rules.append(rule)
    return Scenario(
        persons,
        phones,
        newcomers,
        holders,
        sources,
        tuple(steps),
        tuple(rules),
        draw(st.integers(0, 2**31)),
        hour,
    )


@dataclass
class ScenarioRun:
    """A scenario built step by step in the Rust index and in a `MemoryIndexView` alike."""

    scenario: Scenario
    raw_persons: list[str] = field(default_factory=list)
    raw_phones: list[str] = field(default_factory=list)
    person_ids: dict[int, int] = field(default_factory=dict)  # scenario person -> dense id
    phone_ids: dict[int, int] = field(default_factory=dict)
    index: hm.Index | None = None
    model: MemoryIndexView | None = None
    # Rows fed by identifier, per step, until `finish()` tells the model their dense ids.
    _pending: dict[int, list[tuple[SourceSpec, list[RowSpec]]]] = field(default_factory=dict)

    def versions(self) -> Iterable[tuple[hm.Index, MemoryIndexView]]:
        """Yield (Rust index, Python model) after each step of the scenario."""
        s = self.scenario
        self.raw_persons = lines(hm.synthetic_id_numbers(s.persons + s.newcomers, s.seed))
        self.raw_phones = lines(hm.synthetic_phones(s.phones + s.newcomers, s.seed))
        builder = hm.Index(SECRET).builder()
        dense = from_u32(builder.add_persons("\n".join(self.raw_persons[: s.persons]).encode()))
        # Dense ids are handed out in order of first sight.
        assert dense == list(range(s.persons))
        self.person_ids = dict(enumerate(dense))
        model = MemoryIndexView(person_count=s.persons)
        linked = [i for i in range(s.phones) if s.holders[i] is not None]
        if linked:
            ids = from_u32(
                builder.add_phones(
                    "\n".join(self.raw_phones[i] for i in linked).encode(),
                    u32(self.person_ids[s.holders[i]] for i in linked),  # type: ignore[index]
                )
            )
            self.phone_ids.update(zip(linked, ids, strict=True))
        for i in range(s.phones):
            if s.holders[i] is None:
                self.phone_ids[i] = builder.add_phone(self.raw_phones[i])
        assert sorted(self.phone_ids.values()) == list(range(s.phones))
        for phone, dense_id in self.phone_ids.items():
            holder = s.holders[phone]
            model.link_phone(dense_id, None if holder is None else self.person_ids[holder])
        for source in s.sources:
            if source.hourly:
                builder.define_source(source.name, source.keyed_by, source.has_county, hourly=True)
            else:
                builder.define_source(source.name, source.keyed_by, source.has_county)
            model.add_source(source.name, source.keyed_by, source.has_county, source.hourly)

        for step in s.steps:
            self._apply(builder, model, step)
            index = builder.finish()
            self._learn_newcomers(index, model, step)
            assert index.person_count == model.person_count
            assert index.phone_count == len(self.phone_ids)
            for source in s.sources:
                assert index.source_is_hourly(source.name) is source.hourly
            self.index, self.model = index, model
            yield index, model
            builder = index.builder()

    def _apply(self, builder: hm.IndexBuilder, model: MemoryIndexView, step: StepSpec) -> None:
        s = self.scenario
        for phone, holder in step.links:
            phone_id = self.phone_ids[phone]
            if holder is None:
                had_holder = model.holder_of_phone(phone_id) is not None
                assert builder.unlink_phone(self.raw_phones[phone]) is had_holder
                model.link_phone(phone_id, None)
            else:
                assert (
                    builder.add_phone(self.raw_phones[phone], self.person_ids[holder]) == phone_id
                )
                model.link_phone(phone_id, self.person_ids[holder])
        for county, level in step.levels:
            builder.set_county_level(county, level)
            model.set_county_level(county, level)
        for source_index, members in step.removals:
            source = s.sources[source_index]
            known = self.person_ids if source.keyed_by == "person" else self.phone_ids
            ids = sorted({known[m] for m in members if m in known})
            builder.remove_rows(source.name, u32(ids))
            model.remove_rows(source.name, ids)
        for source_index in step.cleared:
            builder.clear_source(s.sources[source_index].name)
            model.clear_source(s.sources[source_index].name)
        for source_index, source in enumerate(s.sources):
            rows = [r for r in step.rows if r.source == source_index]
            if not rows:
                continue
            person_keyed = source.keyed_by == "person"
            if source.by_identifier:
                raws = self.raw_persons if person_keyed else self.raw_phones
                identifiers = [
                    raws[r.member] if (person_keyed or r.member % 2) else "+86 " + raws[r.member]
                    for r in rows
                ]
                times = [r.at for r in rows]
                counties = [r.county for r in rows] if source.has_county else None
                if source.hourly:
                    counted = builder.add_rows_by_identifier(
                        source.name, identifiers, counties=counties, hours=times
                    )
                else:
                    counted = builder.add_rows_by_identifier(
                        source.name, identifiers, times, counties
                    )
                assert counted == len(rows)
                # The model learns newcomer ids after `finish()`; park the rows until then.
                self._pending.setdefault(id(step), []).append((source, rows))
            else:
                known = self.person_ids if person_keyed else self.phone_ids
                rows = [r for r in rows if r.member in known]
                for at in sorted({r.at for r in rows}, key=lambda d: (d is not None, d or 0)):
                    bucket = [r for r in rows if r.at == at]
                    ids = [known[r.member] for r in bucket]
                    counties = [r.county for r in bucket] if source.has_county else None
                    packed = u32(counties) if counties is not None else None
                    if source.hourly:
                        builder.add_rows(source.name, u32(ids), counties=packed, hour=at)
                        model.add_rows(source.name, ids, counties=counties, hour=at)
                    else:
                        builder.add_rows(source.name, u32(ids), at, packed)
                        model.add_rows(source.name, ids, at, counties)

    def _learn_newcomers(self, index: hm.Index, model: MemoryIndexView, step: StepSpec) -> None:
        for source, rows in self._pending.pop(id(step), []):
            person_keyed = source.keyed_by == "person"
            for r in rows:
                if person_keyed:
                    if r.member not in self.person_ids:
                        found = index.person_id(self.raw_persons[r.member])
                        assert found is not None, "a feed row registers its person"
                        self.person_ids[r.member] = found
                    dense_id = self.person_ids[r.member]
                else:
                    if r.member not in self.phone_ids:
                        found = index.phone_id(self.raw_phones[r.member])
                        assert found is not None, "a feed row registers its phone"
                        self.phone_ids[r.member] = found
                        model.link_phone(found, None)
                    dense_id = self.phone_ids[r.member]
                counties = [r.county] if source.has_county else None
                if source.hourly:
                    model.add_rows(source.name, [dense_id], counties=counties, hour=r.at)
                else:
                    model.add_rows(source.name, [dense_id], r.at, counties)
        model.person_count = len(self.person_ids)
        assert sorted(self.person_ids.values()) == list(range(len(self.person_ids)))


def compare_everything(
    index: hm.Index,
    model: MemoryIndexView,
    rules: Sequence[dict[str, Any]],
    today: int,
    hour: int | None = None,
) -> hm.Verdicts:
    """Assert that the Rust verdicts, the reference over the Rust index and the reference over
    the Python model agree for every registered person, in every form, on `today` at `hour`
    (None: the matcher's default, the day's last hour). Returns the verdicts."""
    plan = hm.Plan(list(rules), version="model")
    if hour is None:
        verdicts = hm.Verdicts(index, plan, today)
        assert verdicts.hour == today * 24 + 23
    else:
        verdicts = hm.Verdicts(index, plan, today, hour)
        assert verdicts.hour == hour
    assert verdicts.today == today
    rule_ids = plan.rule_ids
    assert rule_ids == [r["id"] for r in rules]
    over_index = ReferenceEvaluator(index, rules, today, hour)
    over_model = ReferenceEvaluator(model, rules, today, hour)
    persons = list(range(index.person_count))
    batch_bitmap = _all_persons(index.person_count)
    batch = over_index.evaluate_batch(batch_bitmap)
    batch_verdicts = batch.verdicts()
    model_batch = over_model.evaluate_batch(batch_bitmap)

    colours, masks = verdicts.evaluate_many(u32(persons))
    masks_list = from_u64(masks)
    assert len(colours) == len(persons) and len(masks_list) == len(persons)
    for person in persons:
        expected = over_model.evaluate(person)
        context = f"person {person}, phones {model.phones_of(person)}"
        assert over_index.evaluate(person) == expected, context
        assert batch_verdicts[person] == expected, context
        verdict = verdicts.evaluate(person)
        assert verdict.person_id == person
        assert native_triple(verdict) == expected, context
        assert verdicts.colour(person) == expected.colour, context
        assert colours[person] == expected.colour, context
        assert masks_list[person] == expected.fired_mask, context
        assert verdict.rules == rules_of_mask(rule_ids, expected.fired_mask)
        assert verdict.cleared == rules_of_mask(rule_ids, expected.cleared_mask)
        assert plan.colour_of_mask(expected.fired_mask) == expected.colour
    counts = batch.colour_counts()
    assert model_batch.colour_counts() == counts
    assert verdicts.colour_counts() == counts
    assert verdicts.rule_counts() == batch.rule_counts() == model_batch.rule_counts()
    return verdicts


def _all_persons(count: int) -> Any:
    from pyroaring import BitMap

    return BitMap(range(count))
