"""A plain-Python evaluation of a rule set over feed rows: the executable statement of what a rule
means, used to test the Rust matcher against it and to try a rule set on a handful of people.
Quadratic and slow by design; production verdicts come from `healthcode_matcher.Verdicts`.

Semantics (the matcher's): on day T a check with a window of d days on a daily source matches
rows dated T - d + 1 .. T and undated rows. On an hourly source (`Source.hourly`) the window is
exact to the hour: evaluated at hour H (an hour of T, by default its last, 23:00), a window of N
hours (N * 24 for a window in days) matches rows at hours h with h <= H and H - h < N, and
undated rows. Without a window every row matches. `min_level` compares the row county's grade; a
phone-keyed check matches through any phone in the person's name. A person-keyed clear clears
the whole rule; a phone-keyed clear takes only that phone out of the rule's phone checks. The
colour is the most severe rule that fired and was not cleared.

Hours are whole hours since 1970-01-01 00:00 Asia/Shanghai (`hour // 24` is the day number). A
row may carry `"hour"` (an int); a row of an hourly source with only a `"day"` counts as 00:00 of
that day, and a row of a daily source with only an `"hour"` counts on that hour's day.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from services._common.days import day_number, hour_date, hour_of_date, last_hour
from services._common.sources import SOURCES

from .model import Check, Rule, RuleSet

_SEVERITY = {"green": 0, "yellow": 1, "red": 2}
# An hour of a date, as the matcher numbers hours.
hour_number = hour_of_date


@dataclass(frozen=True, slots=True)
class Outcome:
    colour: str  # "green" | "yellow" | "red"
    fired: tuple[str, ...]  # rules that fired and were not cleared, in rule-set order
    cleared: tuple[str, ...]  # rules whose checks matched but a clear (person or phone) undid


class Feed:
    """Rows (as `clients.feedgen` writes them) indexed by (source, identifier)."""

    def __init__(self, rows: Iterable[Mapping[str, Any]], county_levels: Mapping[int, int]):
        # Each row's time in its source's unit: a date (daily) or an hour number (hourly).
        self._rows: dict[tuple[str, str], list[tuple[date | int | None, int | None]]] = defaultdict(
            list
        )
        self._levels = dict(county_levels)
        for r in rows:
            key = r["id_number"] if "id_number" in r else r["phone"]
            self._rows[(r["source"], key)].append((_row_time(r), r.get("county")))

    def matches(self, check: Check, identifier: str, today: date, hour: int | None = None) -> bool:
        """Whether a row of `identifier` matches `check` on `today` at `hour` (an hour number
        of `today`; None: its last hour)."""
        now = last_hour(today) if hour is None else hour
        return any(
            self._in_window(check, at, today, now) and self._graded(check, county)
            for at, county in self._rows.get((check.source, identifier), ())
        )

    @staticmethod
    def _in_window(check: Check, at: date | int | None, today: date, hour: int) -> bool:
        if at is None or check.window is None:
            return True  # undated: currently on the list; no window: every bucket
        if isinstance(at, int):  # an hourly source: exact to the hour
            return at <= hour and hour - at < check.window.hours
        return at <= today and (today - at).days < check.window.days

    def _graded(self, check: Check, county: int | None) -> bool:
        if check.min_level is None:
            return True
        return county is not None and self._levels.get(county, 0) >= check.min_level


def _row_time(r: Mapping[str, Any]) -> date | int | None:
    """A row's time in its source's unit (see the module docstring)."""
    src = SOURCES.get(r["source"])
    hour = r.get("hour")
    day = None if r.get("day") is None else date.fromisoformat(r["day"])
    if src is not None and src.hourly:
        if hour is not None:
            return int(hour)
        return None if day is None else hour_number(day)
    if day is None and hour is not None:
        return hour_date(int(hour))
    return day


def evaluate(
    rule_set: RuleSet,
    feed: Feed,
    id_number: str,
    phones: Sequence[str],
    today: date,
    hour: int | None = None,
) -> Outcome:
    """The outcome for one person on `today` at `hour` (an hour number of `today`, which ends
    the windows of hourly sources; None: the last hour of `today`, as the matcher defaults)."""
    now = last_hour(today) if hour is None else hour
    if now // 24 != day_number(today):
        raise ValueError(f"hour {now} is not an hour of {today.isoformat()}")
    fired: list[str] = []
    cleared: list[str] = []
    colour = "green"
    for rule in rule_set.rules:
        raw = _matched(rule, feed, id_number, phones, today, now)
        if not raw:
            continue
        person_cleared = any(
            feed.matches(c, id_number, today, now)
            for c in rule.clears
            if SOURCES[c.source].keyed_by == "person"
        )
        phone_cleared = {
            ph
            for ph in phones
            for c in rule.clears
            if SOURCES[c.source].keyed_by == "phone" and feed.matches(c, ph, today, now)
        }
        remaining = [ph for ph in phones if ph not in phone_cleared]
        if person_cleared or not _matched(rule, feed, id_number, remaining, today, now):
            cleared.append(rule.id)
            continue
        fired.append(rule.id)
        if _SEVERITY[rule.colour] > _SEVERITY[colour]:
            colour = rule.colour
    return Outcome(colour, tuple(fired), tuple(cleared))


def _matched(
    rule: Rule, feed: Feed, id_number: str, phones: Sequence[str], today: date, hour: int
) -> bool:
    def one(c: Check) -> bool:
        if SOURCES[c.source].keyed_by == "phone":
            return any(feed.matches(c, ph, today, hour) for ph in phones)
        return feed.matches(c, id_number, today, hour)

    results = (one(c) for c in rule.checks)
    return all(results) if rule.match == "all" else any(results)
