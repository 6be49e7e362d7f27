"""Validation of feed batches: every row is checked before any is stored, and every problem is
reported with its row's field path (`rows[17].id_number: ... it should be 3`), so a feed fixes a
batch in one round trip. Pure: no gRPC, no database, no matcher index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from services._common.actors import Actor
from services._common.days import check_county, parse_day
from services._common.errors import InvalidArgument, ResourceExhausted
from services._common.identifiers import Identifiers, check_key
from services._common.logs import redact
from services._common.sources import Source, get_source
from services.risk_index.model import Batch, RawRow, Row

MAX_BATCH_ID_CHARS = 128
MAX_ATTRIBUTES = 16
MAX_ATTRIBUTE_KEY_CHARS = 64
MAX_ATTRIBUTE_VALUE_CHARS = 256
MAX_MASKED_CHARS = 32
# Feeds send recent history; a row older than this is almost surely a typo in the year.
MAX_ROW_AGE_DAYS = 366

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
) -> Batch:
    """A validated batch, or InvalidArgument listing every problem, or ResourceExhausted when the
    batch has more than `max_rows` rows (checked first: it costs nothing)."""
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
                checked.append(validate_row(raw, source, f"rows[{i}]", identifiers, today))
            except InvalidArgument as error:
                violations.extend(error.violations)
    if violations:
        raise InvalidArgument(violations)
    assert source is not None
    return Batch(bid, source.name, replace, actor, checked)


def validate_row(
    raw: RawRow, source: Source, field: str, identifiers: Identifiers, today: int
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

    day: int | None = None
    if source.dated:
        if not raw.day.strip():
            violations.append((f"{field}.day", f"source {source.name!r} needs a day, YYYY-MM-DD"))
        else:
            try:
                day = parse_day(
                    raw.day, f"{field}.day", today_day=today, max_age_days=MAX_ROW_AGE_DAYS
                )
            except InvalidArgument as error:
                violations.extend(error.violations)
    elif raw.day.strip():
        violations.append(
            (f"{field}.day", f"source {source.name!r} is undated (a current list): leave it empty")
        )

    county: int | None = None
    if source.has_county:
        try:
            county = check_county(raw.county, f"{field}.county")
        except InvalidArgument as error:
            violations.extend(error.violations)
    elif raw.county:
        violations.append((f"{field}.county", f"source {source.name!r} has no county: leave 0"))

    violations.extend(check_attributes(raw.attributes, f"{field}.attributes"))
    if violations:
        raise InvalidArgument(violations)
    assert key is not None
    return Row(source.keyed_by, key, masked, day, county, dict(raw.attributes))


def check_masked(masked: str, field: str) -> str:
    """The masked form a platform service sends with a key: short, and not a raw number."""
    m = masked.strip()
    if not m:
        raise InvalidArgument([(field, "required with a key subject (e.g. 138****1234)")])
    if len(m) > MAX_MASKED_CHARS or "*" not in m or redact(m) != m:
        raise InvalidArgument([(field, "send the masked form (e.g. 138****1234), not the number")])
    return m


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
        elif redact(v) != v or redact(k) != k:
            out.append((f"{field}[{k}]", "must not hold an ID or phone number"))
    return out
