"""A plain-Python evaluation of a rule set over feed rows: the executable statement of what a rule
means, used to test the Rust matcher against it and to try a rule set on a handful of people.
Quadratic and slow by design; production verdicts come from `healthcode_matcher.Verdicts`.

Semantics (the matcher's): on day T a check with a window of d days matches rows dated
T - d + 1 .. T and undated rows; `min_level` compares the row county's grade; a phone-keyed check
matches through any phone in the person's name. A person-keyed clear clears the whole rule; a
phone-keyed clear takes only that phone out of the rule's phone checks. The colour is the most
severe rule that fired and was not cleared.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from services._common.sources import SOURCES

from .model import Check, Rule, RuleSet

_SEVERITY = {"green": 0, "yellow": 1, "red": 2}


@dataclass(frozen=True, slots=True)
class Outcome:
    colour: str  # "green" | "yellow" | "red"
    fired: tuple[str, ...]  # rules that fired and were not cleared, in rule-set order
    cleared: tuple[str, ...]  # rules whose checks matched but a clear (person or phone) undid


class Feed:
    """Rows (as `clients.feedgen` writes them) indexed by (source, identifier)."""

    def __init__(self, rows: Iterable[Mapping[str, Any]], county_levels: Mapping[int, int]):
        self._rows: dict[tuple[str, str], list[tuple[date | None, int | None]]] = defaultdict(list)
        self._levels = dict(county_levels)
        for r in rows:
            key = r["id_number"] if "id_number" in r else r["phone"]
            day = None if r.get("day") is None else date.fromisoformat(r["day"])
            self._rows[(r["source"], key)].append((day, r.get("county")))

    def matches(self, check: Check, identifier: str, today: date) -> bool:
        return any(
            self._in_window(check, day, today) and self._graded(check, county)
            for day, county in self._rows.get((check.source, identifier), ())
        )

    @staticmethod
    def _in_window(check: Check, day: date | None, today: date) -> bool:
        if day is None or check.days is None:
            return True  # undated: currently on the list; no window: every bucket
        return day <= today and (today - day).days < check.days

    def _graded(self, check: Check, county: int | None) -> bool:
        if check.min_level is None:
            return True
        return county is not None and self._levels.get(county, 0) >= check.min_level


def evaluate(
    rule_set: RuleSet, feed: Feed, id_number: str, phones: Sequence[str], today: date
) -> Outcome:
    fired: list[str] = []
    cleared: list[str] = []
    colour = "green"
    for rule in rule_set.rules:
        raw = _matched(rule, feed, id_number, phones, today)
        if not raw:
            continue
        person_cleared = any(
            feed.matches(c, id_number, today)
            for c in rule.clears
            if SOURCES[c.source].keyed_by == "person"
        )
        phone_cleared = {
            ph
            for ph in phones
            for c in rule.clears
            if SOURCES[c.source].keyed_by == "phone" and feed.matches(c, ph, today)
        }
        remaining = [ph for ph in phones if ph not in phone_cleared]
        if person_cleared or not _matched(rule, feed, id_number, remaining, today):
            cleared.append(rule.id)
            continue
        fired.append(rule.id)
        if _SEVERITY[rule.colour] > _SEVERITY[colour]:
            colour = rule.colour
    return Outcome(colour, tuple(fired), tuple(cleared))


def _matched(rule: Rule, feed: Feed, id_number: str, phones: Sequence[str], today: date) -> bool:
    def one(c: Check) -> bool:
        if SOURCES[c.source].keyed_by == "phone":
            return any(feed.matches(c, ph, today) for ph in phones)
        return feed.matches(c, id_number, today)

    results = (one(c) for c in rule.checks)
    return all(results) if rule.match == "all" else any(results)
