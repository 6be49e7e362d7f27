"""Calendar days as the platform counts them: whole days since 1970-01-01 in Asia/Shanghai; and
hours, for hourly sources (a negative test "within 48 hours"): whole hours since 1970-01-01 00:00
Asia/Shanghai, so that `hour // 24` is the hour's day number.

Declarations reset at local midnight and every dated feed row is a local date, so one function
turns wire dates ("YYYY-MM-DD") into day numbers (the matcher's unit) and back. This module is
the one place that arithmetic is written: services, clients, feed generators, the plain-Python
rule reference and the tests all use it; the matcher takes the numbers it makes.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from services._common.errors import InvalidArgument

SHANGHAI = ZoneInfo("Asia/Shanghai")
EPOCH = dt.date(1970, 1, 1)


def now_shanghai() -> dt.datetime:
    return dt.datetime.now(SHANGHAI)


def day_number(value: dt.date | dt.datetime) -> int:
    """Days since 1970-01-01 of a date, or of an aware datetime's Asia/Shanghai date."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError("datetime must be timezone-aware")
        value = value.astimezone(SHANGHAI).date()
    return (value - EPOCH).days


def today(now: dt.datetime | None = None) -> int:
    """Today's day number in Asia/Shanghai."""
    return day_number(now or now_shanghai())


def day_date(day: int) -> dt.date:
    return EPOCH + dt.timedelta(days=day)


def hour_of_date(day: dt.date, hour_of_day: int = 0) -> int:
    """The hour number of an hour of an (Asia/Shanghai) date."""
    if not 0 <= hour_of_day < 24:
        raise ValueError(f"hour of day {hour_of_day} is not in 0..23")
    return day_number(day) * 24 + hour_of_day


def last_hour(day: dt.date) -> int:
    """23:00 on `day`: the matcher's default evaluation hour, and the "now" of rows made for a
    whole day."""
    return hour_of_date(day, 23)


def hour_date(hour: int) -> dt.date:
    """The Asia/Shanghai date of an hour number."""
    return day_date(hour // 24)


def format_day(day: int) -> str:
    """Day number -> "YYYY-MM-DD"."""
    return day_date(day).isoformat()


def hour_number(value: dt.datetime) -> int:
    """Hours since 1970-01-01 00:00 Asia/Shanghai of an aware datetime: its local day number
    times 24 plus its local hour (the matcher's unit for hourly sources)."""
    if value.tzinfo is None:
        raise ValueError("datetime must be timezone-aware")
    local = value.astimezone(SHANGHAI)
    return day_number(local.date()) * 24 + local.hour


def current_hour(now: dt.datetime | None = None) -> int:
    """The current hour number in Asia/Shanghai."""
    return hour_number(now or now_shanghai())


def hour_start(hour: int) -> dt.datetime:
    """The Asia/Shanghai start of an hour number (aware)."""
    return dt.datetime.combine(day_date(hour // 24), dt.time(hour % 24), tzinfo=SHANGHAI)


def format_hour(hour: int) -> str:
    """Hour number -> "YYYY-MM-DD HH:00" (Asia/Shanghai)."""
    return f"{format_day(hour // 24)} {hour % 24:02d}:00"


def next_midnight(now: dt.datetime) -> dt.datetime:
    """The next Asia/Shanghai midnight after `now` (when the next declaration opens)."""
    local = now.astimezone(SHANGHAI)
    tomorrow = local.date() + dt.timedelta(days=1)
    return dt.datetime.combine(tomorrow, dt.time(0, 0), tzinfo=SHANGHAI)


def parse_day(
    text: str,
    field: str,
    *,
    today_day: int | None = None,
    max_age_days: int | None = None,
    allow_future: bool = False,
) -> int:
    """A wire date "YYYY-MM-DD" -> day number, or InvalidArgument naming the field.

    With `today_day`, a future date is refused (unless `allow_future`) and, with
    `max_age_days`, so is one older than that many days.
    """
    try:
        date = dt.date.fromisoformat(text.strip())
        if len(text.strip()) != 10:
            raise ValueError
    except ValueError:
        raise InvalidArgument([(field, "use a date written YYYY-MM-DD")]) from None
    day = day_number(date)
    if today_day is not None:
        if day > today_day and not allow_future:
            raise InvalidArgument([(field, f"{text.strip()} is in the future")])
        if max_age_days is not None and day < today_day - max_age_days:
            raise InvalidArgument([(field, f"{text.strip()} is more than {max_age_days} days ago")])
    return day


# GB/T 2260 county codes: two-digit province 11-82, six digits in all.
MIN_COUNTY, MAX_COUNTY = 110000, 829999


def check_county(county: int, field: str) -> int:
    """A 6-digit GB/T 2260 county code."""
    if not MIN_COUNTY <= county <= MAX_COUNTY:
        raise InvalidArgument(
            [(field, f"a county is a 6-digit GB/T 2260 code ({MIN_COUNTY}-{MAX_COUNTY})")]
        )
    return county
