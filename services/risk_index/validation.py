"""Validation of feed batches: every row is checked before any is stored, and every problem is
reported with its row's field path (`rows[17].id_number: ... it should be 3`), so a feed fixes a
batch in one round trip. Pure: no gRPC, no database, no matcher index.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence

from services._common.actors import Actor
from services._common.days import check_county, format_day, hour_number, parse_day
from services._common.errors import InvalidArgument, ResourceExhausted
from services._common.identifiers import KEY_BYTES, Identifiers, check_key
from services._common.logs import redact
from services._common.sources import Source, get_source
from services.risk_index.model import Batch, KeyedPerson, RawRow, Row

MAX_BATCH_ID_CHARS = 128
MAX_ATTRIBUTES = 16
MAX_ATTRIBUTE_KEY_CHARS = 64
MAX_ATTRIBUTE_VALUE_CHARS = 256
MAX_MASKED_CHARS = 32
# Feeds send recent history; a row older than this is almost surely a typo in the year.
MAX_ROW_AGE_DAYS = 366
# A lab's clock may run a little ahead of ours: a time up to this far in the future is taken.
MAX_CLOCK_SKEW = dt.timedelta(minutes=5)

# The shortest raw number `redact` masks: an 11-digit mobile (an ID number has 16+ digits).
_DIGIT_RUN = re.compile(r"\d{11}")

_PERSON_SUBJECTS = ("id_number", "person_key")
_PHONE_SUBJECTS = ("phone", "phone_key")


def known_source(name: str, field: str = "source") -> Source:
    """The catalogue entry, or INVALID_ARGUMENT naming the field."""
    source = get_source(name.strip())
    if source is None:
        raise InvalidArgument([(field, f"unknown source {name.strip()!r}; ListSources names them")])
    return source


def validate_batch(
    *,
    actor: Actor,
    source_name: str,
    batch_id: str,
    rows: Sequence[RawRow],
    replace: bool,
    identifiers: Identifiers,
    today: int,
    max_rows: int,
    now: dt.datetime | None = None,
) -> Batch:
    """A validated batch, or InvalidArgument listing every problem, or ResourceExhausted when the
    batch has more than `max_rows` rows (checked first: it costs nothing). `now` (aware) bounds
    the `at` of rows of hourly sources; without it only their day is checked against `today`."""
    if len(rows) > max_rows:
        raise ResourceExhausted(
            f"a batch holds at most {max_rows} rows, this one has {len(rows)}; split it",
            [("rows", f"{len(rows)} rows > {max_rows}")],
        )
    violations: list[tuple[str, str]] = []
    bid = batch_id.strip()
    if not bid:
        violations.append(("batch_id", "a batch id is required (it makes replays harmless)"))
    elif len(bid) > MAX_BATCH_ID_CHARS:
        violations.append(("batch_id", f"at most {MAX_BATCH_ID_CHARS} characters"))
    source: Source | None = None
    try:
        source = known_source(source_name)
    except InvalidArgument as error:
        violations.extend(error.violations)
    if not rows and not replace:
        violations.append(("rows", "a batch holds at least one row"))
    checked: list[Row] = []
    if source is not None:
        for i, raw in enumerate(rows):
            try:
                checked.append(validate_row(raw, source, f"rows[{i}]", identifiers, today, now=now))
            except InvalidArgument as error:
                violations.extend(error.violations)
    if violations:
        raise InvalidArgument(violations)
    assert source is not None
    return Batch(bid, source.name, replace, actor, checked)


def validate_row(
    raw: RawRow,
    source: Source,
    field: str,
    identifiers: Identifiers,
    today: int,
    *,
    now: dt.datetime | None = None,
) -> Row:
    """One row; InvalidArgument with every problem of the row."""
    violations: list[tuple[str, str]] = []
    key: bytes | None = None
    masked = ""
    wanted = _PERSON_SUBJECTS if source.keyed_by == "person" else _PHONE_SUBJECTS
    if not raw.subject:
        violations.append((field, f"set one of {' or '.join(wanted)}"))
    elif raw.subject not in wanted:
        what = "an ID number" if source.keyed_by == "person" else "a phone number"
        violations.append(
            (
                f"{field}.{raw.subject}",
                f"source {source.name!r} is keyed by {what}: use {' or '.join(wanted)}",
            )
        )
    else:
        try:
            if raw.subject == "id_number":
                identified = identifiers.person(str(raw.value), f"{field}.id_number")
                key, masked = identified.key, identified.masked
            elif raw.subject == "phone":
                identified = identifiers.phone(str(raw.value), f"{field}.phone")
                key, masked = identified.key, identified.masked
            else:
                value = raw.value if isinstance(raw.value, bytes) else b""
                key = check_key(value, f"{field}.{raw.subject}")
                masked = check_masked(raw.masked, f"{field}.masked")
        except InvalidArgument as error:
            violations.extend(error.violations)

    day, hour, problems = _check_time(raw, source, field, today, now)
    violations.extend(problems)

    county: int | None = None
    if source.has_county:
        try:
            county = check_county(raw.county, f"{field}.county")
        except InvalidArgument as error:
            violations.extend(error.violations)
    elif raw.county:
        violations.append((f"{field}.county", f"source {source.name!r} has no county: leave 0"))

    if raw.attributes:  # most rows have none
        violations.extend(check_attributes(raw.attributes, f"{field}.attributes"))
    if violations:
        raise InvalidArgument(violations)
    assert key is not None
    attributes = dict(raw.attributes) if raw.attributes else {}
    return Row(source.keyed_by, key, masked, day, county, attributes, hour)


def _check_time(
    raw: RawRow, source: Source, field: str, today: int, now: dt.datetime | None
) -> tuple[int | None, int | None, list[tuple[str, str]]]:
    """(day, hour, problems) of a row: a day for dated sources, and for hourly ones the hour of
    `at` (None when only a day was given: it counts from 00:00)."""
    if raw.at is not None and not source.hourly:
        unit = "a day" if source.dated else "no time (a current list)"
        return (
            None,
            None,
            [(f"{field}.at", f"source {source.name!r} rows carry {unit}: leave it unset")],
        )
    if raw.at is not None:
        return _check_at(raw, field, today, now)
    if not raw.day.strip():
        if source.hourly:
            why = (
                f"source {source.name!r} counts hours: give the time of the event, or at least "
                "its day (counted from 00:00)"
            )
            return None, None, [(f"{field}.at", why)]
        if source.dated:
            return None, None, [(f"{field}.day", f"source {source.name!r} needs a day, YYYY-MM-DD")]
        return None, None, []
    if not source.dated:
        why = f"source {source.name!r} is undated (a current list): leave it empty"
        return None, None, [(f"{field}.day", why)]
    try:
        day = parse_day(raw.day, f"{field}.day", today_day=today, max_age_days=MAX_ROW_AGE_DAYS)
    except InvalidArgument as error:
        return None, None, list(error.violations)
    return day, None, []


def _check_at(
    raw: RawRow, field: str, today: int, now: dt.datetime | None
) -> tuple[int | None, int | None, list[tuple[str, str]]]:
    """(day, hour, problems) of an hourly source's row timed by `at`."""
    at = raw.at
    assert at is not None
    if at.tzinfo is None:
        return None, None, [(f"{field}.at", "a time must carry its offset (UTC or +08:00)")]
    hour = hour_number(at)
    day = hour // 24
    problems: list[tuple[str, str]] = []
    if now is not None and at > now + MAX_CLOCK_SKEW:
        problems.append((f"{field}.at", f"{at.isoformat()} is in the future"))
    elif now is None and day > today:
        problems.append((f"{field}.at", f"{format_day(day)} is in the future"))
    if day < today - MAX_ROW_AGE_DAYS:
        problems.append((f"{field}.at", f"more than {MAX_ROW_AGE_DAYS} days ago"))
    if raw.day.strip():
        try:
            given = parse_day(raw.day, f"{field}.day")
        except InvalidArgument as error:
            problems.extend(error.violations)
        else:
            if given != day:
                why = (
                    f"{raw.day.strip()} is not the Asia/Shanghai date of `at` "
                    f"({format_day(day)}): leave it empty or make them agree"
                )
                problems.append((f"{field}.day", why))
    return (None, None, problems) if problems else (day, hour, [])


def check_masked(masked: str, field: str) -> str:
    """The masked form a platform service sends with a key: short, and not a raw number."""
    m = masked.strip()
    if not m:
        raise InvalidArgument([(field, "required with a key subject (e.g. 138****1234)")])
    if len(m) > MAX_MASKED_CHARS or "*" not in m or not _clean(m):
        raise InvalidArgument([(field, "send the masked form (e.g. 138****1234), not the number")])
    return m


def _clean(text: str) -> bool:
    """True if `text` holds nothing `redact` would mask. Both of its patterns need 11 digits in
    a row, so text without such a run (every masked form) skips the two substitutions."""
    return _DIGIT_RUN.search(text) is None or redact(text) == text


def check_reason(reason: str, field: str, min_chars: int, max_chars: int) -> str:
    """A free-text reason a person will read (an override's), stripped: `min_chars` to
    `max_chars` printable characters (no line breaks or control characters), never an ID or
    phone number (`redact` would mask it)."""
    text = reason.strip()
    if len(text) < min_chars:
        why = "required: say why" if not text else f"at least {min_chars} characters: say why"
        raise InvalidArgument([(field, why)])
    if len(text) > max_chars or not text.isprintable():
        raise InvalidArgument([(field, f"at most {max_chars} printable characters, one line")])
    if not _clean(text):
        raise InvalidArgument([(field, "must not hold an ID or phone number")])
    return text


def check_attributes(attributes: Mapping[str, str], field: str) -> list[tuple[str, str]]:
    """Attributes are provenance: small, and never carrying a raw identifier."""
    items = dict(attributes)
    out: list[tuple[str, str]] = []
    if len(items) > MAX_ATTRIBUTES:
        out.append((field, f"at most {MAX_ATTRIBUTES} attributes"))
    for k, v in items.items():
        if not k or len(k) > MAX_ATTRIBUTE_KEY_CHARS:
            out.append((field, f"attribute names are 1-{MAX_ATTRIBUTE_KEY_CHARS} characters"))
        elif len(v) > MAX_ATTRIBUTE_VALUE_CHARS:
            out.append((f"{field}[{k}]", f"at most {MAX_ATTRIBUTE_VALUE_CHARS} characters"))
        elif not _clean(v) or not _clean(k):
            out.append((f"{field}[{k}]", "must not hold an ID or phone number"))
    return out


def check_people(people: Sequence[KeyedPerson]) -> list[KeyedPerson]:
    """Every key and masked form of a bulk registration, or InvalidArgument naming each bad
    field (people[3].phones[1].phone_key)."""
    out: list[KeyedPerson] = []
    for person in people:
        # Platform services send keys and masked forms as they should be: those pass as they
        # are; others are normalised (bytes, trimmed) and checked again.
        if not _normal(person):
            person = KeyedPerson(
                bytes(person.key),
                person.masked.strip(),
                [(bytes(k), m.strip()) for k, m in person.phones],
                [(bytes(k), m.strip()) for k, m in person.cards],
                person.exchange_hashes,
            )
            if not _normal(person):
                raise InvalidArgument(_people_violations(people))
        out.append(person)
    return out


def _normal(person: KeyedPerson) -> bool:
    return (
        _usable(person.key, person.masked)
        and all(_usable(k, m) for k, m in person.phones)
        and all(_usable(k, m) for k, m in person.cards)
    )


def _usable(key: bytes, masked: str) -> bool:
    """What `check_key` and `check_masked` accept, already in the form they return."""
    return (
        type(key) is bytes
        and len(key) == KEY_BYTES
        and 0 < len(masked) <= MAX_MASKED_CHARS
        and "*" in masked
        and masked == masked.strip()
        and _clean(masked)
    )


def _people_violations(people: Sequence[KeyedPerson]) -> list[tuple[str, str]]:
    """Every bad key and masked form of a bulk registration, by field path."""
    violations: list[tuple[str, str]] = []

    def check(key: bytes, masked: str, field: str, key_name: str, masked_name: str) -> None:
        try:
            check_key(key, f"{field}.{key_name}")
        except InvalidArgument as error:
            violations.extend(error.violations)
        try:
            check_masked(masked, f"{field}.{masked_name}")
        except InvalidArgument as error:
            violations.extend(error.violations)

    for i, person in enumerate(people):
        f = f"people[{i}]"
        check(person.key, person.masked, f, "person_key", "masked_id_number")
        for j, (key, masked) in enumerate(person.phones):
            check(key, masked, f"{f}.phones[{j}]", "phone_key", "masked_phone")
        for j, (key, masked) in enumerate(person.cards):
            check(key, masked, f"{f}.cards[{j}]", "card_key", "masked_card")
    return violations
